"""Alchemical ligand model vs openmmtools' AbsoluteAlchemicalFactory, computed at test time.

CB7-B2: the guest B2 (30 atoms) is the ligand. openmmtools runs in this process (x64 is on,
so pymbar's switch to 64-bit JAX changes nothing); its Reference-platform energies and
forces at the same lambdas are the reference.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd.kernels.errors import InputError
from diffmd.potentials.alchemical import alchemical_energy

from openmm_reference import openmm_system

openmm = pytest.importorskip("openmm")
alchemy = pytest.importorskip("openmmtools.alchemy")
from openmm import app, unit  # noqa: E402

LAMBDAS = [(1.0, 1.0), (1.0, 0.5), (1.0, 0.0), (0.5, 0.0), (0.2, 0.0), (0.0, 0.0)]  # (sterics, electrostatics)


def _ligand(system, resname="B2"):
    top = system.topology
    return [i for i in range(system.n_atoms) if top.residue_names[top.residue_index[i]] == resname]


def _openmmtools(part, nonbonded, implicit_solvent, annihilate_electrostatics, annihilate_sterics, lambdas,
                 cutoff=0.9):
    """openmmtools energies [kJ/mol] and forces [kJ/mol/nm] at each (sterics, electrostatics) pair."""
    omm, positions, box, top = openmm_system(*diffmd.data.cb7_b2(part), nonbonded=nonbonded, cutoff=cutoff,
                                             implicit_solvent=app.OBC2 if implicit_solvent else None)
    ligand = [a.index for a in top.atoms() if a.residue.name == "B2"]
    # 'shifted' keeps the reference system's reaction field (the default 'switched' rewrites it
    # for every atom); no effect without a cutoff
    factory = alchemy.AbsoluteAlchemicalFactory(alchemical_rf_treatment="shifted")
    region = alchemy.AlchemicalRegion(alchemical_atoms=ligand, annihilate_electrostatics=annihilate_electrostatics,
                                      annihilate_sterics=annihilate_sterics)
    alchemical = factory.create_alchemical_system(omm, region)
    state = alchemy.AlchemicalState.from_system(alchemical)
    context = openmm.Context(alchemical, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    energies, forces = [], []
    for sterics, electrostatics in lambdas:
        state.lambda_sterics, state.lambda_electrostatics = sterics, electrostatics
        state.apply_to_context(context)
        s = context.getState(getEnergy=True, getForces=True)
        energies.append(s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(s.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def _diffmd(part, nonbonded, implicit_solvent, mode, lambdas, cutoff=0.9):
    system = diffmd.load_amber(*diffmd.data.cb7_b2(part))
    model = system.energy_fn(nonbonded=nonbonded, cutoff=None if nonbonded == "nocutoff" else cutoff,
                             implicit_solvent=implicit_solvent)
    params, fn = alchemical_energy(model, _ligand(system), mode=mode)
    nbrs = fn.neighbor_list(system.positions, system.box)

    def energy_and_forces(sterics, electrostatics):
        p = dataclasses.replace(params, lambda_sterics=sterics, lambda_electrostatics=electrostatics)
        e, g = jax.value_and_grad(fn, argnums=1)(p, jnp.asarray(system.positions), system.box, nbrs)
        return e, -g

    lam = np.asarray(lambdas)
    e, f = jax.jit(jax.vmap(energy_and_forces))(jnp.asarray(lam[:, 0]), jnp.asarray(lam[:, 1]))
    return np.asarray(e), np.asarray(f)


def _assert_close(got, want, what):
    e_got, f_got = got
    e_want, f_want = want
    for k, lam in enumerate(LAMBDAS[:len(e_got)]):
        assert abs(e_got[k] - e_want[k]) <= 1e-6 * abs(e_want[k]), f"{what} {lam}: {e_got[k]!r} vs {e_want[k]!r}"
        err = np.sqrt(np.mean(np.sum((f_got[k] - f_want[k]) ** 2, axis=1)))
        rms = np.sqrt(np.mean(np.sum(f_want[k] ** 2, axis=1)))
        assert err <= 1e-6 * rms, f"{what} {lam}: force RMS error {err:.3e} of {rms:.3e}"


def test_obc2_decoupling_matches_openmmtools():
    # softcore LJ, linear Coulomb scaling, GB weights; the default mode keeps the guest's own interactions
    got = _diffmd("complex-vacuum", "nocutoff", "obc2", "decouple", LAMBDAS)
    want = _openmmtools("complex-vacuum", "nocutoff", True, False, False, LAMBDAS)
    _assert_close(got, want, "OBC2 decoupling")
    # lambda changes the energy (the test would pass for a model that ignored it otherwise)
    assert abs(got[0][0] - got[0][-1]) > 50.0


@pytest.mark.slow
@pytest.mark.parametrize("nonbonded,implicit_solvent,mode", [
    ("nocutoff", "obc2", "annihilate"), ("cutoff", None, "decouple"), ("cutoff", None, "annihilate")])
def test_vacuum_complex_matches_openmmtools(nonbonded, implicit_solvent, mode):
    ann = mode == "annihilate"
    got = _diffmd("complex-vacuum", nonbonded, implicit_solvent, mode, LAMBDAS)
    want = _openmmtools("complex-vacuum", nonbonded, implicit_solvent, ann, ann, LAMBDAS)
    _assert_close(got, want, f"{nonbonded} {implicit_solvent} {mode}")


@pytest.mark.slow
@pytest.mark.parametrize("nonbonded,mode", [("pme", "annihilate"), ("cutoff", "decouple")])
def test_explicit_water_matches_openmmtools(nonbonded, mode):
    # PME: exact treatment (scaled charges in direct, reciprocal, exclusion, self and charged-system
    # terms); periodic reaction field; both with the softcore dispersion tail
    ann = mode == "annihilate"
    got = _diffmd("complex-explicit", nonbonded, None, mode, LAMBDAS)
    want = _openmmtools("complex-explicit", nonbonded, None, ann, ann, LAMBDAS)
    _assert_close(got, want, f"explicit {nonbonded} {mode}")


def _ligand_coulomb(positions, ligand):
    """OpenMM: the guest's own Coulomb energy in vacuum, (non-bonded pairs, 1-4 pairs) [kJ/mol]."""
    omm, _, _, _ = openmm_system(*diffmd.data.cb7_b2("complex-explicit"), nonbonded="nocutoff")
    force = next(f for f in omm.getForces() if isinstance(f, openmm.NonbondedForce))
    lig = set(ligand)
    out = []
    for keep_pairs in (True, False):
        f = openmm.NonbondedForce()
        for i in range(force.getNumParticles()):
            q, sigma, _ = force.getParticleParameters(i)
            f.addParticle(q if (i in lig and keep_pairs) else 0.0, sigma, 0.0)
        for k in range(force.getNumExceptions()):
            i, j, qq, sigma, _ = force.getExceptionParameters(k)
            f.addException(i, j, qq if (i in lig and j in lig and not keep_pairs) else 0.0, sigma, 0.0)
        s = openmm.System()
        for i in range(force.getNumParticles()):
            s.addParticle(1.0)
        s.addForce(f)
        ctx = openmm.Context(s, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(positions)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return out


@pytest.mark.slow
def test_pme_decoupling_keeps_the_vacuum_ligand():
    # openmmtools cannot decouple with exact PME; diffmd's decoupling is its annihilated electrostatics
    # plus (1 - lambda_e^2) of the guest's vacuum Coulomb and (1 - lambda_e) of its 1-4 Coulomb
    # (so that lambda_e = 0 is the vacuum guest), with the Lennard-Jones of openmmtools' decoupling
    system = diffmd.load_amber(*diffmd.data.cb7_b2("complex-explicit"))
    got = _diffmd("complex-explicit", "pme", None, "decouple", LAMBDAS)
    e_ref, f_ref = _openmmtools("complex-explicit", "pme", None, True, False, LAMBDAS)
    pairs, pairs14 = _ligand_coulomb(system.positions, _ligand(system))
    assert abs(pairs) > 10.0 and abs(pairs14) > 10.0
    lam_e = np.array([le for _, le in LAMBDAS])
    want = e_ref + (1 - lam_e**2) * pairs + (1 - lam_e) * pairs14
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    # forces where the correction vanishes
    _assert_close((got[0][:1], got[1][:1]), (want[:1], f_ref[:1]), "PME decoupling at lambda 1")


def test_lambda_gradient_and_errors():
    system = diffmd.load_amber(*diffmd.data.cb7_b2("complex-vacuum"))
    ligand = _ligand(system)
    params, fn = alchemical_energy(system.energy_fn(), ligand)
    x = jnp.asarray(system.positions)

    jitted = jax.jit(fn)  # the model is hashable (by identity), so it can be jitted as it is

    def energy(ls, le):
        return jitted(dataclasses.replace(params, lambda_sterics=jnp.asarray(ls), lambda_electrostatics=jnp.asarray(le)), x)

    g = jax.jit(jax.grad(energy, argnums=(0, 1)))(0.4, 0.3)
    h = 1e-5
    for k, (a, b) in enumerate([((0.4 + h, 0.3), (0.4 - h, 0.3)), ((0.4, 0.3 + h), (0.4, 0.3 - h))]):
        fd = (float(energy(*a)) - float(energy(*b))) / (2 * h)
        assert abs(float(g[k]) - fd) <= 1e-5 * max(1.0, abs(fd)), (k, float(g[k]), fd)
    with pytest.raises(InputError, match="mode"):
        alchemical_energy(system.energy_fn(), ligand, mode="vanish")
    with pytest.raises(InputError, match="separate molecule"):
        alchemical_energy(system.energy_fn(), ligand[:-3])  # cuts the guest's bonds
    with pytest.raises(InputError, match="lambda_sterics"):
        alchemical_energy(system.energy_fn(), ligand, lambda_sterics=1.5)
