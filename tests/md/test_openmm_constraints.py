"""Systems from OpenMM keep what the OpenMM System defines: constraints (rigid waters by SETTLE,
the rest by SHAKE/RATTLE), degrees of freedom, nonbonded settings; and everything diffmd cannot
model is refused in one message."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import openmm
import pytest
from openmm import app, unit

import diffmd
from conftest import assert_energy_close, assert_forces_close
from diffmd.md import prepare as run_prepare  # the runner's set-up (diffmd.prepare builds Amber files)
from diffmd.kernels.constraint_setup import constraints_from_pairs
from diffmd.kernels.constraints import constraint_deviations
from openmm_reference import energies_and_forces


def amber_openmm(files, **kw):
    """(openmm.System, positions [nm], topology) from OpenMM's own Amber loader."""
    prmtop, inpcrd = app.AmberPrmtopFile(files[0]), app.AmberInpcrdFile(files[1])
    if inpcrd.boxVectors is not None:
        prmtop.topology.setPeriodicBoxVectors(inpcrd.boxVectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        system = prmtop.createSystem(**kw)
    return system, inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer), prmtop.topology


def test_hbond_constraints_imported():
    system_omm, positions, topology = amber_openmm(diffmd.data.alanine_dipeptide(), constraints=app.HBonds)
    system = diffmd.from_openmm(system_omm, positions, topology)
    physics = system.physics
    assert len(physics.constraint_pairs) == system_omm.getNumConstraints() == 12
    expected = {tuple(sorted(system_omm.getConstraintParameters(k)[:2])) for k in range(12)}
    assert {tuple(sorted(p)) for p in physics.constraint_pairs.tolist()} == expected
    cons = constraints_from_pairs(physics.constraint_pairs, physics.constraint_lengths, system.masses)
    assert cons.pairs.shape[0] == 12 and cons.water.shape[0] == 0  # dynamics: test_openmm_xml_cli and below


@pytest.mark.slow
def test_hbond_constraints_held_in_dynamics():
    system_omm, positions, topology = amber_openmm(diffmd.data.alanine_dipeptide(), constraints=app.HBonds)
    system = diffmd.from_openmm(system_omm, positions, topology)
    result = diffmd.simulate(system, 300, report_every=100, precision="mixed", progress=False)
    assert result.n_dof == 3 * 22 - system_omm.getNumConstraints() - 3
    physics = system.physics
    cons = constraints_from_pairs(physics.constraint_pairs, physics.constraint_lengths, system.masses)
    _, pdev = constraint_deviations(cons, jnp.asarray(result.positions))
    assert float(jnp.max(jnp.abs(pdev))) < 2e-5
    # 51 degrees of freedom: T/300 K has a standard deviation of sqrt(2/51) = 0.2; false failures:
    # P(T > 700 K) = P(chi-squared_51 > 119) = 2e-7 per report
    assert np.all(np.isfinite(result.temperature)) and np.all(result.temperature < 700), result.temperature


def test_rigid_waters_go_to_settle_and_the_rest_to_shake():
    rigid, _, _ = amber_openmm(diffmd.data.water_box(), nonbondedMethod=app.CutoffPeriodic,
                               nonbondedCutoff=0.45)  # rigidWater=True, OpenMM's default
    peptide, _, _ = amber_openmm(diffmd.data.alanine_dipeptide(), constraints=app.AllBonds)
    for system_omm, waters, pairs in ((rigid, 216, 0), (peptide, 0, 21)):
        system = diffmd.from_openmm(system_omm)
        physics = system.physics
        cons = constraints_from_pairs(physics.constraint_pairs, physics.constraint_lengths, system.masses)
        assert (cons.water.shape[0], cons.pairs.shape[0]) == (waters, pairs)
        assert cons.n_constraints == system_omm.getNumConstraints()
    # an O-H-H triangle with unequal O-H lengths is no SETTLE water: SHAKE takes it
    cons = constraints_from_pairs([[0, 1], [0, 2], [1, 2]], [0.1, 0.11, 0.16], np.array([16.0, 1.0, 1.0]))
    assert cons.water.shape[0] == 0 and cons.pairs.shape[0] == 3
    cons = constraints_from_pairs([[0, 1], [0, 2], [1, 2]], [0.1, 0.1, 0.16], np.array([16.0, 1.0, 1.0]))
    assert cons.water.tolist() == [[0, 1, 2]] and np.allclose(cons.water_distances, [[0.1, 0.16]])
    with pytest.raises(diffmd.InputError, match="mass"):
        constraints_from_pairs([[0, 1]], [0.1], np.array([16.0, 0.0]))


def test_settings_that_contradict_the_openmm_system_are_errors():
    system_omm, positions, topology = amber_openmm(diffmd.data.alanine_dipeptide(), constraints=app.HBonds)
    system = diffmd.from_openmm(system_omm, positions, topology)
    with pytest.raises(diffmd.InputError, match="nonbonded='pme'"):
        system.energy_fn(nonbonded="pme")
    with pytest.raises(diffmd.InputError, match="constraints='hbonds'"):
        diffmd.simulate(system, 10, constraints="hbonds")
    with pytest.raises(diffmd.InputError, match="hydrogen_mass"):
        run_prepare(system, hydrogen_mass=1.5)
    with pytest.raises(diffmd.InputError, match="rigid_water"):
        run_prepare(system, rigid_water=False)
    system.energy_fn(nonbonded="nocutoff", precision="single")  # what the System says is fine


@pytest.mark.parametrize("method", ["cutoff", pytest.param("pme", marks=pytest.mark.slow)])
def test_nonbonded_settings_come_from_the_system(method):
    """The System's method, cutoff, reaction-field dielectric, dispersion correction and explicit
    PME parameters are used by energy_fn() without arguments."""
    files = diffmd.data.water_box()
    if method == "cutoff":
        system_omm, positions, _ = amber_openmm(files, nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=0.45)
        nb = next(f for f in system_omm.getForces() if isinstance(f, openmm.NonbondedForce))
        nb.setReactionFieldDielectric(40.0)
        nb.setUseDispersionCorrection(False)
    else:
        system_omm, positions, _ = amber_openmm(files, nonbondedMethod=app.PME, nonbondedCutoff=0.45)
        nb = next(f for f in system_omm.getForces() if isinstance(f, openmm.NonbondedForce))
        nb.setPMEParameters(3.1, 18, 20, 22)
    _, total, forces = energies_and_forces(system_omm, positions)
    system = diffmd.from_openmm(system_omm, positions)
    params, energy_fn = system.energy_fn()
    if method == "cutoff":
        assert (energy_fn.cutoff, energy_fn.reaction_field_dielectric, energy_fn.use_dispersion_correction) == (
            0.45, 40.0, False)
    else:
        assert energy_fn.pme_alpha == 3.1 and energy_fn.pme_grid == (18, 20, 22)
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    e, g = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, system.box, nbrs)
    assert_energy_close(e, total, 1e-6, what=f"{method} total")
    assert_forces_close(-np.asarray(g), forces, 1e-6, what=f"{method} forces")


def test_every_unsupported_force_is_listed_at_once():
    system_omm, positions, _ = amber_openmm(diffmd.data.alanine_dipeptide())
    system_omm.addForce(openmm.CustomNonbondedForce("0"))
    system_omm.addForce(openmm.CustomBondForce("0"))
    system_omm.addForce(openmm.CustomTorsionForce("0"))
    system_omm.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    nb = next(f for f in system_omm.getForces() if isinstance(f, openmm.NonbondedForce))
    nb.setNonbondedMethod(openmm.NonbondedForce.LJPME)
    with pytest.raises(diffmd.UnsupportedError) as err:
        diffmd.from_openmm(system_omm, positions)
    for name in ("CustomNonbondedForce", "CustomBondForce", "CustomTorsionForce", "MonteCarloBarostat (a barostat",
                 "pressure=", "LJPME"):
        assert name in str(err.value)


@pytest.mark.slow
def test_charmm36_system_lists_all_its_custom_forces():
    prmtop = app.AmberPrmtopFile(diffmd.data.t4_lysozyme("receptor")[0])
    system_omm = app.ForceField("charmm36.xml").createSystem(prmtop.topology)
    with pytest.raises(diffmd.UnsupportedError) as err:
        diffmd.from_openmm(system_omm)
    for name in ("CustomTorsionForce", "CustomNonbondedForce", "CustomBondForce"):
        assert name in str(err.value)


@pytest.mark.slow  # ~40 s: batched dynamics + double-precision labels
def test_datasets_from_an_openmm_system_use_its_physics():
    """``datasets.generate`` on an OpenMM System takes its constraints and nonbonded settings by
    default (it used to pass H-bond constraints and be refused), and labels with its energy."""
    system_omm, positions, topology = amber_openmm(diffmd.data.alanine_dipeptide(), constraints=app.HBonds)
    system = diffmd.from_openmm(system_omm, positions, topology)
    data = diffmd.datasets.generate(system, 2, 10, replicas=2, seed=1, minimize=False, progress=False)
    assert data.metadata["constraints"] == "openmm-system" and data.metadata["nonbonded"] == "nocutoff"
    _, total, forces = energies_and_forces(system_omm, data.positions[1])
    assert abs(data.energies[1] - total) < 1e-6 * max(abs(total), 1.0)
    assert_forces_close(data.forces[1], forces, 1e-6, "labels")
