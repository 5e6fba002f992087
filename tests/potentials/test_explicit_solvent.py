"""PME electrostatics and the dispersion correction in full Amber systems, against OpenMM."""

import jax
import numpy as np
import pytest

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import dhfr_files, energies_and_forces, openmm_system


CASES = [
    ("alanine-explicit", diffmd.data.alanine_dipeptide_explicit),
    ("cb7-b2-explicit", lambda: diffmd.data.cb7_b2("complex-explicit")),
]


def compare(files, precision, rel_energy, rel_force):
    system_omm, positions, box, _ = openmm_system(*files, nonbonded="pme", cutoff=0.9)
    per_force, total, forces = energies_and_forces(system_omm, positions, box)
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(nonbonded="pme", cutoff=0.9, precision=precision)
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, system.box, nbrs)
    terms = energy_fn.terms(params, system.positions, system.box, nbrs)
    nonbonded = sum(float(terms[k]) for k in ("coulomb", "coulomb_reciprocal", "lennard_jones", "coulomb14",
                                              "lennard_jones14", "dispersion_correction"))
    assert_energy_close(nonbonded, per_force["NonbondedForce"], rel_energy, what="NonbondedForce")
    assert_energy_close(energy, total, rel_energy, what="total")
    assert_forces_close(-np.asarray(grad), forces, rel_force, what="forces")
    return energy_fn


@pytest.mark.parametrize("name,files", CASES, ids=[c[0] for c in CASES])
def test_pme_double_matches_openmm(name, files):
    energy_fn = compare(files(), "double", 1e-5, 1e-5)
    assert energy_fn.pme_grid is not None and energy_fn.pme_alpha > 0


@pytest.mark.parametrize("precision", ["mixed", "single"])
def test_pme_reduced_precision_matches_openmm(precision):
    compare(diffmd.data.alanine_dipeptide_explicit(), precision, 1e-4, 1e-4)


def test_pme_parameters_match_openmm_choice():
    import openmm

    files = diffmd.data.cb7_b2("complex-explicit")
    system_omm, positions, box, _ = openmm_system(*files, nonbonded="pme", cutoff=0.9)
    context = openmm.Context(system_omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    nonbonded = [f for f in system_omm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    alpha, nx, ny, nz = nonbonded.getPMEParametersInContext(context)
    system = diffmd.load_amber(*files)
    _, energy_fn = system.energy_fn(nonbonded="pme", cutoff=0.9)
    assert abs(energy_fn.pme_alpha - alpha) < 1e-9 * alpha
    assert energy_fn.pme_grid == (nx, ny, nz)


def test_pme_box_and_charge_gradients():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    params, energy_fn = system.energy_fn(nonbonded="pme", cutoff=0.9)
    nbrs = energy_fn.neighbor_list(system.positions, system.box)

    def energy(p, box):
        return energy_fn(p, system.positions, box, nbrs)

    g_params, g_box = jax.jit(jax.grad(energy, argnums=(0, 1)))(params, system.box)
    # tiny steps: the energy is truncated at the cutoff, so a larger step can carry a
    # pair across it (a real jump, as in OpenMM) and spoil the difference quotient
    h = 1e-8
    for axis in range(3):
        step = np.zeros((3, 3))
        step[axis, axis] = h
        fd = (energy(params, system.box + step) - energy(params, system.box - step)) / (2 * h)
        # round-off of a -3e4 kJ/mol total over a 2e-8 nm step is ~1e-3 kJ/mol/nm
        assert abs(g_box[axis, axis] - fd) < 1e-4 * max(abs(fd), 1.0), (axis, g_box[axis, axis], fd)
    h = 1e-6
    q = np.asarray(params.charges)
    i = 7
    plus = params.__class__(**{**params.__dict__, "charges": q + h * (np.arange(len(q)) == i)})
    minus = params.__class__(**{**params.__dict__, "charges": q - h * (np.arange(len(q)) == i)})
    fd = (energy(plus, system.box) - energy(minus, system.box)) / (2 * h)
    assert abs(g_params.charges[i] - fd) < 1e-5 * max(abs(fd), 1.0)
    # the dispersion correction depends on the volume: part of the box derivative
    corr = jax.grad(lambda b: energy_fn.terms(params, system.positions, b, nbrs)["dispersion_correction"])(system.box)
    assert float(corr[0, 0]) > 0


@pytest.mark.slow
def test_pme_dhfr_matches_openmm():
    files = dhfr_files()  # openmmtools' package data (the [test] extra); a skip names what is missing
    compare(files, "double", 1e-5, 1e-5)
    compare(files, "mixed", 1e-4, 1e-4)


def test_missing_dhfr_skip_names_openmmtools_and_the_test_extra(tmp_path, monkeypatch):
    """Without openmmtools (and no DIFFMD_DHFR_DIR or download cache) the DHFR tests skip and say
    what is missing and how CI gets it, instead of a bare "not present"."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.delenv("DIFFMD_DHFR_DIR", raising=False)
    monkeypatch.setenv("DIFFMD_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openmmtools" else real(name, *a))
    with pytest.raises(pytest.skip.Exception, match=r"openmmtools.*\[test\] extra.*\.ci/run"):
        dhfr_files()
