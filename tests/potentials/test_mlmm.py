"""Hybrid ML/MM (mechanical embedding) against OpenMM and against its own parts.

CB7-B2 with the guest B2 (30 atoms) as the ML region. The OpenMM reference of the MM part is
built here, with plain OpenMM forces, as openmm-ml's ``createMixedSystem`` builds it: the
guest's internal bonds, angles and torsions get zero force constants and every guest-guest
pair becomes a NonbondedForce exception with no charge product and no epsilon. The neural
part is a small untrained SchNet, evaluated on its own for the sums.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd.kernels.errors import InputError
from diffmd.potentials.mlmm import mlmm_energy
from diffmd.potentials.neural import schnet, species_from_elements

from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces, openmm_system

openmm = pytest.importorskip("openmm")
from openmm import app  # noqa: E402

CUTOFF = 0.9


def _guest(system, resname="B2"):
    top = system.topology
    return np.array([i for i in range(system.n_atoms) if top.residue_names[top.residue_index[i]] == resname])


def _small_schnet(system, guest, seed=0):
    species, _ = species_from_elements(np.asarray(system.topology.elements)[guest])
    return schnet(species, cutoff=0.5, features=8, interactions=1, n_rbf=6, energy_scale=5.0, precision="double",
                  key=jax.random.PRNGKey(seed))


def _model(part, nonbonded, implicit_solvent, seed=0):
    system = diffmd.load_amber(*diffmd.data.cb7_b2(part))
    guest = _guest(system)
    mm = system.energy_fn(nonbonded=nonbonded, cutoff=None if nonbonded == "nocutoff" else CUTOFF,
                          implicit_solvent=implicit_solvent, precision="double")
    nn = _small_schnet(system, guest, seed)
    params, fn = mlmm_energy(mm, nn, guest)
    return system, guest, mm, nn, params, fn


def _openmm_removed(part, nonbonded, implicit_solvent, guest):
    """OpenMM (full energy, full forces, energy and forces with the guest's internal MM terms removed)."""
    system, positions, box, _ = openmm_system(*diffmd.data.cb7_b2(part), nonbonded=nonbonded, cutoff=CUTOFF,
                                              implicit_solvent=app.OBC2 if implicit_solvent else None)
    _, e_full, f_full = energies_and_forces(system, positions, box)
    ml = {int(i) for i in guest}
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(k)
                if {i, j} <= ml:
                    force.setBondParameters(k, i, j, r0, 0.0)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for k in range(force.getNumAngles()):
                i, j, m, theta0, _ = force.getAngleParameters(k)
                if {i, j, m} <= ml:
                    force.setAngleParameters(k, i, j, m, theta0, 0.0)
        elif isinstance(force, openmm.PeriodicTorsionForce):
            for k in range(force.getNumTorsions()):
                i, j, m, n, per, phase, _ = force.getTorsionParameters(k)
                if {i, j, m, n} <= ml:
                    force.setTorsionParameters(k, i, j, m, n, per, phase, 0.0)
        elif isinstance(force, openmm.NonbondedForce):
            atoms = sorted(ml)
            for a, i in enumerate(atoms):
                for j in atoms[:a]:
                    force.addException(i, j, 0.0, 1.0, 0.0, True)
    _, e_removed, f_removed = energies_and_forces(system, positions, box)
    return e_full, f_full, e_removed, f_removed


def _mm_minus_internal(fn, params, system):
    """diffmd's E_MM - E_MM_internal and its forces (the MM part of ML/MM)."""
    nbrs = fn.neighbor_list(system.positions, system.box)

    def energy(x):
        parts = fn.components(params, x, system.box, nbrs)
        return parts["mm"] - parts["mm_internal"], parts

    (e, parts), g = jax.jit(jax.value_and_grad(energy, has_aux=True))(jnp.asarray(system.positions))
    return float(e), -np.asarray(g), {k: float(v) for k, v in parts.items()}


@pytest.mark.parametrize("part,nonbonded,implicit_solvent", [
    ("complex-vacuum", "nocutoff", "obc2"), ("complex-vacuum", "cutoff", None),
    pytest.param("complex-explicit", "pme", None, marks=pytest.mark.slow),
    pytest.param("complex-explicit", "cutoff", None, marks=pytest.mark.slow)])
def test_mm_removal_matches_openmm(part, nonbonded, implicit_solvent):
    system, guest, _, _, params, fn = _model(part, nonbonded, implicit_solvent)
    e, f, parts = _mm_minus_internal(fn, params, system)
    e_full, _, e_removed, f_removed = _openmm_removed(part, nonbonded, implicit_solvent, guest)
    what = f"{part} {nonbonded} {implicit_solvent}"
    # the removed terms themselves (OpenMM's difference of two systems), then what is left
    assert abs(e_full - e_removed) > 50.0  # the guest's internal MM energy is not trivially small
    assert_energy_close(parts["mm_internal"], e_full - e_removed, 1e-6, what=f"{what} internal")
    assert_energy_close(e, e_removed, 1e-6, what=what)
    assert_forces_close(f, f_removed, 1e-6, what=what)


def test_energy_is_the_sum_of_parts():
    system, guest, _, nn, params, fn = _model("complex-vacuum", "nocutoff", None)
    _, _, e_removed, f_removed = _openmm_removed("complex-vacuum", "nocutoff", None, guest)
    # the neural model alone on the guest's coordinates, with its own neighbor table
    x_guest = jnp.asarray(system.positions[guest])
    nn_nbrs = nn[1].neighbor_list(x_guest, None)
    e_nn, g_nn = jax.value_and_grad(nn[1], argnums=1)(nn[0], x_guest, None, nn_nbrs)
    assert abs(float(e_nn)) > 1.0
    f_want = np.array(f_removed)
    f_want[guest] -= np.asarray(g_nn)
    e, g = jax.jit(jax.value_and_grad(fn, argnums=1))(params, jnp.asarray(system.positions), None, None)
    assert_energy_close(e, e_removed + float(e_nn), 1e-6, what="ML/MM")
    assert_forces_close(-np.asarray(g), f_want, 1e-6, what="ML/MM forces")


def test_lambda_zero_is_amber_and_lambda_is_differentiable():
    system, guest, mm, _, params, fn = _model("complex-vacuum", "cutoff", None)
    x = jnp.asarray(system.positions)
    nbrs = fn.neighbor_list(system.positions, None)

    @jax.jit
    def energy(lam, xx):
        return fn(dataclasses.replace(params, lambda_interpolate=lam), xx, None, nbrs)

    e0, g0 = jax.jit(jax.value_and_grad(energy, argnums=1))(jnp.asarray(0.0), x)
    e_amber, g_amber = jax.jit(jax.value_and_grad(mm[1], argnums=1))(mm[0], x, None, nbrs)
    assert float(e0) == float(e_amber)
    # the same forces (two compiled programs may order the Amber sums differently: rounding only)
    np.testing.assert_allclose(np.asarray(g0), np.asarray(g_amber), rtol=1e-12, atol=1e-9)
    # dE/dlambda = E_ML - E_MM_internal, against a central difference at an interior lambda
    parts = jax.jit(fn.components)(params, x, None, nbrs)
    de = float(jax.jit(jax.grad(energy))(jnp.asarray(0.4), x))
    h = 1e-4
    fd = (float(energy(jnp.asarray(0.4 + h), x)) - float(energy(jnp.asarray(0.4 - h), x))) / (2 * h)
    assert abs(de - fd) <= 1e-7 * abs(de)
    np.testing.assert_allclose(de, float(parts["ml"] - parts["mm_internal"]), rtol=1e-12)
    assert abs(de) > 10.0
    # windows as a vmapped axis under jit: the same energies as one lambda at a time
    lams = jnp.asarray([0.0, 0.25, 0.5, 1.0])
    batched = np.asarray(jax.jit(jax.vmap(energy, in_axes=(0, None)))(lams, x))
    looped = np.array([float(energy(lam, x)) for lam in lams])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    np.testing.assert_allclose(batched, float(e_amber) + np.asarray(lams) * de, rtol=1e-10)
    # the neural weights get gradients through the ML/MM energy
    g_ml = jax.jit(jax.grad(lambda p: fn(p, x, None, nbrs)))(params).ml
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree_util.tree_leaves(g_ml))


def test_mixed_precision_follows_double():
    # the CLI's default: Amber in mixed precision (float32 pairs, float64 sums), the network in single
    system = diffmd.load_amber(*diffmd.data.cb7_b2())
    guest = _guest(system)
    species, _ = species_from_elements(np.asarray(system.topology.elements)[guest])
    results = []
    weights = None  # the single-precision network's weights, used by both (initial draws differ by dtype)
    for mm_precision, nn_precision in (("mixed", "single"), ("double", "double")):
        nn_params, nn_fn = schnet(species, cutoff=0.5, features=8, interactions=1, n_rbf=6, energy_scale=5.0,
                                  precision=nn_precision, key=jax.random.PRNGKey(0))
        weights = nn_params if weights is None else weights
        same = jax.tree_util.tree_map(lambda w, t: jnp.asarray(w, t.dtype), weights, nn_params)
        params, fn = mlmm_energy(system.energy_fn(precision=mm_precision), (same, nn_fn), guest)
        e, g = jax.jit(jax.value_and_grad(fn, argnums=1))(params, jnp.asarray(system.positions), None, None)
        results.append((float(e), -np.asarray(g, np.float64), e.dtype))
    (e32, f32, dtype), (e64, f64, _) = results
    assert dtype == jnp.float64  # energies accumulate in float64
    assert_energy_close(e32, e64, 1e-5, what="mixed ML/MM energy")
    assert_forces_close(f32, f64, 1e-4, what="mixed ML/MM forces")


def test_errors_before_tracing():
    system = diffmd.load_amber(*diffmd.data.cb7_b2())
    guest = _guest(system)
    mm = system.energy_fn(precision="double")
    nn = _small_schnet(system, guest)
    with pytest.raises(InputError, match="built for 30 atoms but the ML region has 29"):
        mlmm_energy(mm, nn, guest[:-1])
    with pytest.raises(InputError, match="ascending"):
        mlmm_energy(mm, nn, guest[::-1])
    with pytest.raises(InputError, match="empty"):
        mlmm_energy(mm, nn, [])
    with pytest.raises(InputError, match="repeat"):
        mlmm_energy(mm, nn, np.concatenate([guest[:1], guest[:-1]]))
    with pytest.raises(InputError, match=r"lie in \[0, 156\)"):
        mlmm_energy(mm, nn, guest + 200)
    with pytest.raises(InputError, match="Amber"):
        mlmm_energy(nn, nn, guest)


def test_runs_in_simulate(tmp_path):
    system, _, _, _, params, fn = _model("complex-vacuum", "nocutoff", None)
    result = diffmd.simulate(system, 10, potential=(params, fn), dt=0.001, report_every=5, precision="double",
                             out=str(tmp_path / "run"), progress=False)
    assert np.isfinite(result.potential_energy).all() and result.steps[-1] == 10
    assert np.isfinite(result.positions).all()


@pytest.mark.slow  # three compilations of Amber + SchNet (energy, ensemble set-up, chunk): ~60 s on 2 busy cores
def test_lambda_windows_run_as_an_ensemble():
    system, _, _, _, params, fn = _model("complex-vacuum", "nocutoff", None)
    # two windows (lambda 0 and 1) as one batch
    windows = [dataclasses.replace(params, lambda_interpolate=jnp.asarray(lam)) for lam in (0.0, 1.0)]
    ens = diffmd.ensemble.prepare(system, replicas=2, potential=(params, fn), params=windows, dt=0.001,
                                  precision="double")
    energies = np.asarray(ens.energy())
    parts = fn.components(params, jnp.asarray(system.positions), None, None)
    np.testing.assert_allclose(energies[1] - energies[0], float(parts["ml"] - parts["mm_internal"]), rtol=1e-9)
    run = diffmd.ensemble.simulate(ens, 10, report_every=5, progress=False)
    assert np.isfinite(run.potential_energy).all() and run.steps[-1] == 10
