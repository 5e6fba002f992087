"""diffmd.from_openmm and the ``diffmd energy`` command."""

import json
import subprocess
import sys

import jax
import numpy as np
import openmm
import pytest

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces, openmm_system


def test_from_openmm_matches_openmm_and_load_amber():
    files = diffmd.data.t4_lysozyme("ligand")
    system_omm, positions, _, topology = openmm_system(*files)
    converted = diffmd.from_openmm(system_omm, positions, topology)
    params, energy_fn = converted.energy_fn()
    energy, grad = jax.value_and_grad(energy_fn, argnums=1)(params, converted.positions)
    _, total, forces = energies_and_forces(system_omm, positions)
    assert_energy_close(energy, total, 1e-6, what="from_openmm total")
    assert_forces_close(-np.asarray(grad), forces, 1e-6, what="from_openmm forces")
    loaded = diffmd.load_amber(*files)
    p2, f2 = loaded.energy_fn()
    assert_energy_close(f2(p2, loaded.positions), energy, 1e-7, what="load_amber vs from_openmm")
    assert converted.topology.atom_names == loaded.topology.atom_names


def test_from_openmm_rejects_unsupported_force():
    system_omm, positions, _, _ = openmm_system(*diffmd.data.alanine_dipeptide())
    system_omm.addForce(openmm.CustomExternalForce("x^2"))
    with pytest.raises(diffmd.UnsupportedError, match="CustomExternalForce"):
        diffmd.from_openmm(system_omm, positions)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "diffmd.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_energy_json_and_forces(tmp_path):
    prmtop, crd = diffmd.data.alanine_dipeptide()
    out = tmp_path / "forces.npy"
    result = run_cli("energy", prmtop, crd, "--forces", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["units"] == "kJ/mol" and report["n_atoms"] == 22
    assert abs(sum(report["terms"].values()) - report["total"]) < 1e-9
    system_omm, positions, _, _ = openmm_system(prmtop, crd)
    _, total, forces = energies_and_forces(system_omm, positions)
    assert_energy_close(report["total"], total, 1e-6, what="cli total")
    got = np.load(out)
    assert got.shape == (22, 3)
    assert_forces_close(got, forces, 1e-6, what="cli forces")


def test_cli_cutoff_periodic():
    prmtop, crd = diffmd.data.alanine_dipeptide_explicit()
    result = run_cli("energy", prmtop, crd, "--nonbonded", "cutoff", "--cutoff", "0.9", "--precision", "mixed")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    system_omm, positions, box, _ = openmm_system(prmtop, crd, nonbonded="cutoff", cutoff=0.9)
    _, total, _ = energies_and_forces(system_omm, positions, box)
    assert_energy_close(report["total"], total, 1e-4, what="cli cutoff total")


def test_cli_bad_input_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.prmtop"
    bad.write_text("not a prmtop\n")
    result = run_cli("energy", str(bad), diffmd.data.alanine_dipeptide()[1])
    assert result.returncode != 0
    assert "the prmtop argument must be an Amber prmtop/parm7 file" in result.stderr
