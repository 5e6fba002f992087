"""OpenMM's own files as input: ``diffmd.load_openmm(system.xml, state.xml | model.pdb)`` and
``diffmd energy|run SYSTEM.xml POSITIONS``, with the System's physics kept and flags that would
change it refused by name."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import openmm
import pytest
from openmm import app, unit

import diffmd
from conftest import assert_energy_close, assert_forces_close
from diffmd.cli import main
from diffmd.io._kinds import file_kind
from openmm_reference import energies_and_forces


@pytest.fixture(scope="module")
def openmm_files(tmp_path_factory):
    """system.xml (alanine dipeptide, H-bond constraints), state.xml (positions, velocities) and
    model.pdb written by OpenMM; plus OpenMM's energy and forces at those positions."""
    folder = tmp_path_factory.mktemp("openmm")
    prmtop_path, crd_path = diffmd.data.alanine_dipeptide()
    prmtop = app.AmberPrmtopFile(prmtop_path)
    system = prmtop.createSystem(constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300, 1, 0.002)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(app.AmberInpcrdFile(crd_path).getPositions())
    context.setVelocitiesToTemperature(300, 1)
    integrator.step(10)
    state = context.getState(getPositions=True, getVelocities=True)
    files = {"system": folder / "system.xml", "state": folder / "state.xml", "pdb": folder / "model.pdb"}
    files["system"].write_text(openmm.XmlSerializer.serialize(system))
    files["state"].write_text(openmm.XmlSerializer.serialize(state))
    with open(files["pdb"], "w") as fh:
        app.PDBFile.writeFile(prmtop.topology, state.getPositions(), fh)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    _, total, forces = energies_and_forces(system, positions)
    return dict(files={k: str(v) for k, v in files.items()}, positions=positions, velocities=velocities,
                total=total, forces=forces, system=system)


def test_file_kinds_are_read_from_content(openmm_files, tmp_path):
    files = openmm_files["files"]
    disguised = tmp_path / "system.prmtop"  # a misleading name changes nothing
    disguised.write_text(open(files["system"]).read())
    prmtop, crd = diffmd.data.alanine_dipeptide()
    assert [file_kind(p) for p in (files["system"], disguised, files["state"], files["pdb"], prmtop, crd)] == [
        "openmm-system", "openmm-system", "openmm-state", "pdb", "prmtop", "amber-ascii"]


def test_load_openmm_from_state_and_from_pdb(openmm_files):
    files, system_omm = openmm_files["files"], openmm_files["system"]
    system = diffmd.load_openmm(files["system"], files["state"])
    np.testing.assert_array_equal(system.positions, openmm_files["positions"])
    np.testing.assert_array_equal(system.velocities, openmm_files["velocities"])
    assert len(system.physics.constraint_pairs) == system_omm.getNumConstraints()
    params, energy_fn = system.energy_fn()
    assert_energy_close(jax.jit(energy_fn)(params, system.positions), openmm_files["total"], 1e-9, what="state.xml")
    from_pdb = diffmd.load_openmm(files["system"], files["pdb"])
    np.testing.assert_allclose(from_pdb.positions, openmm_files["positions"], rtol=0, atol=6e-5)  # 0.001 A columns
    assert from_pdb.topology.atom_names[:3] == ("H1", "CH3", "H2") and from_pdb.velocities is None
    with pytest.raises(diffmd.InputError, match="PDB or a serialized State"):
        diffmd.load_openmm(files["system"], diffmd.data.alanine_dipeptide()[1])
    with pytest.raises(diffmd.InputError, match="not a serialized OpenMM System"):
        diffmd.load_openmm(files["state"], files["state"])


def test_cli_energy_of_an_openmm_system(openmm_files, tmp_path):
    files = openmm_files["files"]
    out = tmp_path / "forces.npy"
    result = subprocess.run([sys.executable, "-m", "diffmd.cli", "energy", files["system"], files["state"], "--forces",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["nonbonded"] == "nocutoff"
    assert_energy_close(report["total"], openmm_files["total"], 1e-6, what="cli total")
    assert_forces_close(np.load(out), openmm_files["forces"], 1e-6, what="cli forces")


def test_cli_run_of_an_openmm_system(openmm_files, tmp_path, capsys):
    files = openmm_files["files"]
    out = tmp_path / "run"
    assert main(["run", files["system"], files["state"], "--steps", "40", "--report-every", "20", "--out", str(out),
                 "--no-progress", "--temperature", "300", "--precision", "double"]) == 0
    rows = open(out / "state.csv").read().splitlines()
    assert len(rows) == 4 and "temperature_k" in rows[0]
    temperatures = [float(r.split(",")[5]) for r in rows[1:]]
    assert all(np.isfinite(temperatures)) and max(temperatures) < 800  # constrained: no blow-up
    assert os.path.exists(out / "trajectory.dcd")


@pytest.mark.parametrize("command,flags", [
    ("run", ["--cutoff", "0.9"]), ("run", ["--nonbonded", "pme"]), ("run", ["--constraints", "hbonds"]),
    ("run", ["--flexible-water"]), ("run", ["--hmr", "1.5"]), ("run", ["--implicit-solvent", "obc2"]),
    ("energy", ["--nonbonded", "cutoff"]), ("run", ["--replicas", "2"]),
])
def test_cli_flags_that_change_an_openmm_system_are_errors(openmm_files, command, flags, capsys):
    files = openmm_files["files"]
    assert main([command, files["system"], files["state"], *flags]) == 2
    assert flags[0] in capsys.readouterr().err
