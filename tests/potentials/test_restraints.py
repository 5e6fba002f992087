"""Flat-bottom and Boresch restraints: energies vs OpenMM/openmmtools, standard-state corrections."""

import copy
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import diffmd
from diffmd.kernels.constants import BOLTZMANN
from diffmd.kernels.errors import InputError
from diffmd.potentials.alchemical import alchemical_energy
from diffmd.potentials.neural import sum_potentials
from diffmd.potentials.restraints import (STANDARD_STATE_VOLUME, boresch_correction, boresch_restraint,
                                          flat_bottom_correction, flat_bottom_restraint, select_boresch_atoms)

openmm = pytest.importorskip("openmm")
from openmm_reference import boresch_force  # noqa: E402
from openmm import unit  # noqa: E402

KT = BOLTZMANN * 300.0


@pytest.fixture(scope="module")
def host_guest():
    system = diffmd.load_amber(*diffmd.data.cb7_b2("complex-vacuum"))
    top = system.topology
    resname = [top.residue_names[r] for r in top.residue_index]
    ligand = [i for i, r in enumerate(resname) if r == "B2"]
    receptor = [i for i, r in enumerate(resname) if r == "CUC"]
    return system, receptor, ligand


def _openmm_energy_forces(force, masses, positions):
    s = openmm.System()
    for m in masses:
        s.addParticle(m)
    s.addForce(force)
    ctx = openmm.Context(s, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def test_flat_bottom_matches_openmmtools(host_guest):
    forces_mod = pytest.importorskip("openmmtools.forces")
    states = pytest.importorskip("openmmtools.states")
    system, receptor, ligand = host_guest
    k, r0 = 800.0, 0.3
    x = system.positions.copy()
    x[ligand] += [0.45, 0.1, 0.0]  # pull the guest out past the well
    params, fn = flat_bottom_restraint(receptor, ligand, system.masses, well_radius=r0, spring_constant=k)
    value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=1))
    e, g = value_and_grad(params, jnp.asarray(x))
    ref = forces_mod.FlatBottomRestraintForce(k * unit.kilojoule_per_mole / unit.nanometer**2, r0 * unit.nanometer,
                                              receptor, ligand)
    e_ref, f_ref = _openmm_energy_forces(copy.deepcopy(ref), system.masses, x)  # a System owns its forces
    assert e_ref > 1.0
    assert abs(float(e) - e_ref) <= 1e-9 * e_ref
    np.testing.assert_allclose(-np.asarray(g), f_ref, atol=1e-8 * np.abs(f_ref).max())
    assert float(value_and_grad(params, jnp.asarray(system.positions))[0]) == 0.0  # inside the well
    # standard-state correction, openmmtools' numerical integral (in kT) vs the closed form
    omm = openmm.System()
    for m in system.masses:
        omm.addParticle(m)
    state = states.ThermodynamicState(omm, 300.0 * unit.kelvin)
    kt = state.kT.value_in_unit(unit.kilojoule_per_mole)
    want = ref.compute_standard_state_correction(state)
    assert abs(flat_bottom_correction(k, r0, kt) / kt - want) < 1e-6 * abs(want)
    # a box smaller than the restraint volume caps it
    assert flat_bottom_correction(k, r0, kt, box_volume=0.05) == pytest.approx(-kt * math.log(STANDARD_STATE_VOLUME / 0.05))


def test_boresch_energy_and_correction(host_guest):
    system, receptor, ligand = host_guest
    atoms = select_boresch_atoms(system.positions, receptor, ligand, system.topology.bonds, system.topology.elements)
    assert set(atoms[:3]) <= set(receptor) and set(atoms[3:]) <= set(ligand)
    assert np.all(system.topology.elements[atoms] > 1)
    params, fn = boresch_restraint(system.positions, atoms)
    assert 0.3 <= float(params.distance) <= 1.0
    assert all(45.0 <= math.degrees(float(a)) <= 135.0 for a in (params.angle_a, params.angle_b))
    value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=1))
    assert float(value_and_grad(params, jnp.asarray(system.positions))[0]) == pytest.approx(0.0, abs=1e-20)
    # energy and forces vs OpenMM evaluating YANK's Boresch expression, away from the reference geometry
    rng = np.random.default_rng(3)
    x = system.positions + rng.normal(0.0, 0.03, system.positions.shape)
    values = [float(getattr(params, f.name)) for f in dataclasses.fields(params)][:12]
    force = boresch_force(atoms, values, lambda_restraints=0.7)
    e_ref, f_ref = _openmm_energy_forces(force, system.masses, x)
    scaled = dataclasses.replace(params, lambda_restraints=jnp.asarray(0.7))
    e, g = value_and_grad(scaled, jnp.asarray(x))
    assert e_ref > 1.0 and abs(float(e) - e_ref) <= 1e-9 * e_ref
    np.testing.assert_allclose(-np.asarray(g), f_ref, atol=1e-7 * np.abs(f_ref).max())
    # the analytic correction vs the restraint's partition function integrated numerically (it
    # factorizes into 1-D integrals); exact in the stiff limit
    for stiff in (1.0, 100.0):
        p = jax.tree_util.tree_map(float, params)
        p = dataclasses.replace(p, **{f: getattr(p, f) * stiff for f in ("k_distance", "k_angle_a", "k_angle_b",
                                                                         "k_dihedral_a", "k_dihedral_b", "k_dihedral_c")})
        z = quad(lambda r: r * r * math.exp(-p.k_distance * (r - p.distance) ** 2 / (2 * KT)), 0,
                 p.distance + 40 * math.sqrt(KT / p.k_distance), points=[p.distance], epsabs=0)[0]
        for k, t0 in ((p.k_angle_a, p.angle_a), (p.k_angle_b, p.angle_b)):
            z *= quad(lambda t: math.sin(t) * math.exp(-k * (t - t0) ** 2 / (2 * KT)), 0, math.pi, points=[t0])[0]
        for k in (p.k_dihedral_a, p.k_dihedral_b, p.k_dihedral_c):
            z *= quad(lambda t: math.exp(-k * t * t / (2 * KT)), -math.pi, math.pi)[0]
        numerical = -KT * math.log(8 * math.pi**2 * STANDARD_STATE_VOLUME / z)
        assert abs(boresch_correction(p, KT) - numerical) < (0.1 if stiff == 1.0 else 1e-3) * KT, stiff
    with pytest.raises(InputError, match="six distinct"):
        boresch_restraint(system.positions, atoms[:5])


def test_restraint_adds_to_alchemical_model(host_guest):
    system, receptor, ligand = host_guest
    alchemical = alchemical_energy(system.energy_fn(), ligand)
    restraint = flat_bottom_restraint(receptor, ligand, system.masses, well_radius=0.2, spring_constant=500.0)
    params, fn = sum_potentials(alchemical, restraint)
    x = jnp.asarray(system.positions).at[jnp.asarray(ligand)].add(0.3)
    nbrs = fn.neighbor_list(x, None)
    total, parts = jax.jit(lambda p, x: (fn(p, x, None, nbrs), fn.energies(p, x, None, nbrs)))(params, x)
    assert float(parts[1]) > 1.0
    assert float(total) == pytest.approx(float(parts[0]) + float(parts[1]), rel=1e-12)
