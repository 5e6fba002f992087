"""GB-OBC2 implicit solvent in full Amber systems, and interaction-energy decomposition, against OpenMM."""

import jax
import numpy as np
import pytest
from openmm import app

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces, openmm_system

CASES = [
    ("alanine-dipeptide", diffmd.data.alanine_dipeptide(), "nocutoff", None),
    ("alanine-dipeptide-cutoff", diffmd.data.alanine_dipeptide(), "cutoff", 2.0),
    ("t4l-ligand", diffmd.data.t4_lysozyme("ligand"), "nocutoff", None),
    ("t4l-ligand-cutoff", diffmd.data.t4_lysozyme("ligand"), "cutoff", 2.0),
    pytest.param("t4l-receptor", diffmd.data.t4_lysozyme("receptor"), "nocutoff", None,
                 marks=pytest.mark.slow),  # the complex covers the same code; kept for -m slow
    ("t4l-complex", diffmd.data.t4_lysozyme("complex"), "nocutoff", None),
    ("t4l-complex-cutoff", diffmd.data.t4_lysozyme("complex"), "cutoff", 2.0),
]


def diffmd_energy(files, method, cutoff, precision):
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(nonbonded=method, cutoff=cutoff, implicit_solvent="obc2",
                                         precision=precision)
    nbrs = energy_fn.neighbor_list(system.positions)
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, None, nbrs)
    return energy_fn.terms(params, system.positions, None, nbrs), energy, -np.asarray(grad)


@pytest.mark.parametrize("name,files,method,cutoff", CASES,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_obc2_matches_openmm(name, files, method, cutoff):
    system_omm, positions, _, _ = openmm_system(*files, nonbonded=method, cutoff=cutoff or 1.0,
                                                implicit_solvent=app.OBC2)
    per_force, total, forces = energies_and_forces(system_omm, positions)
    terms, energy, got = diffmd_energy(files, method, cutoff, "double")
    assert_energy_close(terms["generalized_born"] + terms["surface_area"], per_force["GBSAOBCForce"], 1e-6,
                        what="GBSAOBCForce")
    assert float(terms["surface_area"]) > 0
    assert_energy_close(energy, total, 1e-6, what="total")
    assert_forces_close(got, forces, 1e-6, what="forces")
    if name == "t4l-complex":
        for precision in ("mixed", "single"):
            _, energy32, got32 = diffmd_energy(files, method, cutoff, precision)
            assert_energy_close(energy32, total, 1e-4, what=f"total ({precision})")
            assert_forces_close(got32, forces, 1e-4, what=f"forces ({precision})")


def test_gb_parameter_gradients():
    system = diffmd.load_amber(*diffmd.data.t4_lysozyme("ligand"))
    params, energy_fn = system.energy_fn(implicit_solvent="obc2")
    params = jax.tree_util.tree_map(jax.numpy.asarray, params)
    f = jax.jit(lambda p: energy_fn(p, system.positions))
    grad = jax.grad(f)(params)
    h = 1e-6
    for field in ("gb_radii", "gb_screen", "charges"):
        value = getattr(params, field)
        fd = (f(params.__class__(**{**params.__dict__, field: value.at[3].add(h)}))
              - f(params.__class__(**{**params.__dict__, field: value.at[3].add(-h)}))) / (2 * h)
        got = getattr(grad, field)[3]
        assert abs(got - fd) < 1e-5 * max(abs(fd), 1.0), (field, got, fd)


def test_vmap_over_conformations_with_gb():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn(implicit_solvent="obc2")
    rng = np.random.default_rng(0)
    batch = system.positions[None] + rng.normal(scale=0.01, size=(3,) + system.positions.shape)
    batched = jax.vmap(energy_fn, in_axes=(None, 0))(params, batch)
    np.testing.assert_allclose(batched, [energy_fn(params, x) for x in batch], rtol=1e-12)


def test_interaction_energy_matches_openmm():
    complex_files, receptor_files, ligand_files = (diffmd.data.t4_lysozyme(p) for p in ("complex", "receptor", "ligand"))
    complex_system = diffmd.load_amber(*complex_files)
    receptor = diffmd.load_amber(receptor_files[0])
    ligand = diffmd.load_amber(ligand_files[0])
    result = diffmd.interaction_energy(complex_system, receptor, ligand, implicit_solvent="obc2")
    n_receptor = receptor.n_atoms
    expected = {}
    for name, files, atoms in (("complex", complex_files, slice(None)), ("receptor", receptor_files,
                                                                          slice(0, n_receptor)),
                               ("ligand", ligand_files, slice(n_receptor, None))):
        system_omm, _, _, _ = openmm_system(*files, implicit_solvent=app.OBC2)
        pos = complex_system.positions[atoms]  # one pose: the complex's coordinates
        expected[name] = energies_and_forces(system_omm, pos)
    want_total = expected["complex"][1] - expected["receptor"][1] - expected["ligand"][1]
    assert_energy_close(result["total"], want_total, 1e-6, what="interaction total")
    for ours, theirs in (("generalized_born+surface_area", "GBSAOBCForce"), ("bond", "HarmonicBondForce")):
        got = sum(result["terms"][k] for k in ours.split("+"))
        want = (expected["complex"][0][theirs] - expected["receptor"][0][theirs] - expected["ligand"][0][theirs])
        assert_energy_close(got, want, 1e-6, what=ours)
    assert abs(result["terms"]["bond"]) < 1e-6  # bonded terms cancel at one pose
    assert abs(result["terms"]["lennard_jones"]) > 1.0 and abs(result["terms"]["generalized_born"]) > 1.0
