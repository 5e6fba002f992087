"""Amber energies and forces against OpenMM's Reference platform, computed at test time."""

import jax
import numpy as np
import pytest

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces, openmm_system

NONBONDED_TERMS = ("coulomb", "lennard_jones", "coulomb14", "lennard_jones14", "dispersion_correction")
OPENMM_TERMS = {"bond": "HarmonicBondForce", "angle": "HarmonicAngleForce", "torsion": "PeriodicTorsionForce"}

CASES = [
    ("alanine-dipeptide", diffmd.data.alanine_dipeptide, "nocutoff", None),
    ("t4l-complex", diffmd.data.t4_lysozyme, "nocutoff", None),
    ("cb7-b2", diffmd.data.cb7_b2, "nocutoff", None),
    ("t4l-complex-cutoff", diffmd.data.t4_lysozyme, "cutoff", 1.0),
    ("alanine-explicit-rf", diffmd.data.alanine_dipeptide_explicit, "cutoff", 0.9),
    ("cb7-b2-explicit-rf", lambda: diffmd.data.cb7_b2("complex-explicit"), "cutoff", 1.0),
]

_REFERENCE = {}


def reference(name, files, method, cutoff):
    if name not in _REFERENCE:
        system, positions, box, _ = openmm_system(*files, nonbonded=method, cutoff=cutoff or 1.0)
        _REFERENCE[name] = energies_and_forces(system, positions, box)
    return _REFERENCE[name]


def diffmd_result(files, method, cutoff, precision):
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(nonbonded=method, cutoff=cutoff, precision=precision)
    box = system.box if method != "nocutoff" else None
    nbrs = energy_fn.neighbor_list(system.positions, box)
    terms = energy_fn.terms(params, system.positions, box, nbrs)
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, box, nbrs)
    return terms, energy, -np.asarray(grad)


@pytest.mark.parametrize("name,files,method,cutoff", CASES, ids=[c[0] for c in CASES])
def test_double_precision_matches_openmm(name, files, method, cutoff):
    per_force, total, forces = reference(name, files(), method, cutoff)
    terms, energy, got_forces = diffmd_result(files(), method, cutoff, "double")
    for ours, theirs in OPENMM_TERMS.items():
        assert_energy_close(terms[ours], per_force.get(theirs, 0.0), 1e-6, what=ours)
    nonbonded = sum(float(terms[k]) for k in NONBONDED_TERMS)
    assert_energy_close(nonbonded, per_force["NonbondedForce"], 1e-6, what="nonbonded")
    assert_energy_close(energy, total, 1e-6, what="total")
    assert_forces_close(got_forces, forces, 1e-6, what="forces")


@pytest.mark.parametrize("precision", ["mixed", "single"])
@pytest.mark.parametrize("name,files,method,cutoff", [CASES[1], CASES[4]], ids=[CASES[1][0], CASES[4][0]])
def test_reduced_precision_matches_openmm(name, files, method, cutoff, precision):
    per_force, total, forces = reference(name, files(), method, cutoff)
    terms, energy, got_forces = diffmd_result(files(), method, cutoff, precision)
    assert_energy_close(energy, total, 1e-4, what=f"total ({precision})")
    assert_forces_close(got_forces, forces, 1e-4, what=f"forces ({precision})")
    assert np.asarray(energy).dtype == (np.float64 if precision == "mixed" else np.float32)


def test_dispersion_correction_alone_matches_openmm():
    files = diffmd.data.alanine_dipeptide_explicit()
    with_corr = openmm_system(*files, nonbonded="cutoff", cutoff=0.9, dispersion_correction=True)
    without = openmm_system(*files, nonbonded="cutoff", cutoff=0.9, dispersion_correction=False)
    expected = energies_and_forces(*with_corr[:3])[1] - energies_and_forces(*without[:3])[1]
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(nonbonded="cutoff", cutoff=0.9)
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    got = energy_fn.terms(params, system.positions, system.box, nbrs)["dispersion_correction"]
    assert expected < 0
    assert_energy_close(got, expected, 1e-6, what="dispersion correction")


def test_triclinic_box_matches_openmm():
    files = diffmd.data.water_box()
    system_omm, positions, box, _ = openmm_system(*files, nonbonded="cutoff", cutoff=0.45)
    assert abs(box[1, 0]) > 0.1  # really triclinic
    # the raw file overlaps periodic images: relax it so energies are physical
    rng = np.random.default_rng(0)
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(nonbonded="cutoff", cutoff=0.45)
    pos = system.positions + rng.normal(scale=0.002, size=system.positions.shape)
    nbrs = energy_fn.neighbor_list(pos, system.box)
    energy, grad = jax.value_and_grad(energy_fn, argnums=1)(params, pos, system.box, nbrs)
    _, total, forces = energies_and_forces(system_omm, pos, box)
    assert_energy_close(energy, total, 1e-6, what="triclinic total")
    assert_forces_close(-np.asarray(grad), forces, 1e-6, what="triclinic forces")


def _unpack(tmp_path, name):
    import lzma
    import os

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "cmap", name + ".xz")
    dst = tmp_path / name
    dst.write_bytes(lzma.open(src).read())
    return str(dst)


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_cmap_prmtop_matches_openmm(tmp_path):
    """ff19SB-style prmtop with 16 CMAP terms (OpenMM's test system, see tests/data/cmap/README.md)."""
    prmtop, coords = _unpack(tmp_path, "18protein.parm7"), _unpack(tmp_path, "18protein.rst7")
    # 21,536 atoms in water: periodic reaction-field cutoff
    system_omm, positions, box, _ = openmm_system(prmtop, coords, nonbonded="cutoff", cutoff=1.0)
    per_force, total, forces = energies_and_forces(system_omm, positions, box)
    system = diffmd.load_amber(prmtop, coords)
    assert system.terms.cmap_idx.shape[0] == 16
    params, energy_fn = system.energy_fn(nonbonded="cutoff", cutoff=1.0)
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    terms = jax.jit(energy_fn.terms)(params, system.positions, system.box, nbrs)
    assert_energy_close(terms["cmap"], per_force["CMAPTorsionForce"], 1e-6, what="cmap")
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, system.box, nbrs)
    assert_energy_close(energy, total, 1e-6, what="total")
    assert_forces_close(-np.asarray(grad), forces, 1e-6, what="forces")
    # CMAP grids are differentiable parameters
    g = jax.grad(lambda p: energy_fn.terms(p, system.positions, system.box, nbrs)["cmap"])(params)
    assert np.any(np.asarray(g.cmap_grids) != 0)


def test_chamber_prmtop_with_charmm_terms_is_rejected(tmp_path):
    prmtop = _unpack(tmp_path, "ala3_solv.parm7")
    with pytest.raises(diffmd.UnsupportedError, match="CHARMM_UREY_BRADLEY_COUNT|CHARMM_NUM_IMPROPERS"):
        diffmd.load_amber(prmtop)
