"""Small input gaps: subcommand usage on unknown flags, --replicas, --implicit-solvent choices, PDB
coordinates and swapped files, NaN messages that name the atom, ``python -OO``, the precision story
without x64, and OpenMM's warning about GB radii.

Most of these need no JAX compilation; OpenMM's numbers are computed here at test time.
"""

import json
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import diffmd
from conftest import assert_energy_close
from diffmd import InputError
from diffmd.cli import build_parser, main

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

PRMTOP, CRD = diffmd.data.alanine_dipeptide()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python(*args, code):
    """Run ``code`` in a fresh interpreter (x64 off unless the code turns it on)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv", [["energy", PRMTOP, CRD, "--bogus"], ["run", "--bogus"], ["bench", "--bogus"],
                                  ["train", "config.toml", "--bogus"]])
def test_unknown_flag_prints_the_subcommands_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: diffmd {argv[0]} " in err and f"diffmd {argv[0]}: error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_replicas_must_be_positive(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", PRMTOP, CRD, "--replicas", value, "--steps", "0", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: diffmd run " in err and "argument --replicas" in err
    assert ("give at least 1" if value != "two" else "is not an integer") in err


def test_ensemble_prepare_refuses_zero_replicas():
    system = diffmd.load_amber(PRMTOP, CRD)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(InputError, match=r"replicas must be a positive integer .*pass e\.g\. replicas=4"):
            diffmd.ensemble.prepare(system, replicas=bad)


def test_implicit_solvent_choices_are_the_librarys():
    from diffmd.potentials.amber import IMPLICIT_SOLVENTS

    parser = build_parser()
    for command in (["energy", PRMTOP, CRD], ["run"]):
        for model in IMPLICIT_SOLVENTS:
            assert parser.parse_args([*command, "--implicit-solvent", model]).implicit_solvent == model
    assert set(IMPLICIT_SOLVENTS) == {"obc2", "obc1", "hct"}


def openmm_total(prmtop, positions, implicit=None):
    system = app.AmberPrmtopFile(prmtop).createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=implicit)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


@pytest.mark.parametrize("model, omm_model", [("obc1", "OBC1"), ("hct", "HCT")])
def test_cli_energy_obc1_and_hct_match_openmm(model, omm_model, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HCT warns about this prmtop's mbondi2 radii (both codes do)
        assert main(["energy", PRMTOP, CRD, "--implicit-solvent", model]) == 0
        positions = app.AmberInpcrdFile(CRD).getPositions(asNumpy=True)
        want = openmm_total(PRMTOP, positions, getattr(app, omm_model))
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["implicit_solvent"] == model
    assert_energy_close(report["total"], want, 1e-6, what=f"diffmd energy --implicit-solvent {model}")


# ----------------------------------------------------------------------------- PDB coordinates, wrong kinds


def write_openmm_pdb(path, prmtop, crd):
    """A PDB written by OpenMM from the prmtop's topology (CRYST1 if the inpcrd has a box)."""
    top = app.AmberPrmtopFile(prmtop).topology
    inpcrd = app.AmberInpcrdFile(crd)
    if inpcrd.boxVectors is not None:
        top.setPeriodicBoxVectors(inpcrd.boxVectors)
    with open(path, "w") as fh:
        app.PDBFile.writeFile(top, inpcrd.getPositions(), fh)
    return str(path)


def test_pdb_coordinates_like_openmm(tmp_path, capsys):
    pdb = write_openmm_pdb(tmp_path / "ala.txt", PRMTOP, CRD)  # judged by content, not by the extension
    system = diffmd.load_amber(PRMTOP, pdb)
    reference = app.PDBFile(pdb)
    want = reference.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    np.testing.assert_allclose(system.positions, want, rtol=0, atol=1e-12)
    assert system.box is None and system.velocities is None
    # the command line takes it too, and its energy is OpenMM's for the PDB's positions
    assert main(["energy", PRMTOP, pdb]) == 0
    report = json.loads(capsys.readouterr().out)
    assert_energy_close(report["total"], openmm_total(PRMTOP, reference.getPositions()), 1e-6, what="PDB energy")


def test_pdb_box_from_cryst1_first_model_and_placeholder_cell(tmp_path):
    prmtop, crd = diffmd.data.alanine_dipeptide_explicit()
    pdb = write_openmm_pdb(tmp_path / "solvated.pdb", prmtop, crd)
    system = diffmd.load_amber(prmtop, pdb)
    reference = app.PDBFile(pdb)
    box = np.array([v.value_in_unit(unit.nanometer) for v in reference.topology.getPeriodicBoxVectors()])
    np.testing.assert_allclose(system.box, box, atol=1e-9)
    np.testing.assert_allclose(system.positions, reference.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                               rtol=0, atol=1e-12)
    # two models: the first is read; the wwPDB's 1 x 1 x 1 A CRYST1 means "no cell" (the prmtop's box stays)
    text = open(pdb).read()
    atoms = [ln for ln in text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    moved = [ln[:30] + f"{float(ln[30:38]) + 1.0:8.3f}" + ln[38:] for ln in atoms]
    cryst = "CRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1"
    two = "\n".join([cryst, "MODEL        1", *atoms, "ENDMDL", "MODEL        2", *moved, "ENDMDL", "END"]) + "\n"
    (tmp_path / "two.pdb").write_text(two)
    first = diffmd.load_amber(prmtop, str(tmp_path / "two.pdb"))
    np.testing.assert_array_equal(first.positions, system.positions)
    np.testing.assert_allclose(first.box, diffmd.load_amber(prmtop).box)


def test_pdb_in_another_atom_order_is_caught(tmp_path):
    lines = open(write_openmm_pdb(tmp_path / "ala.pdb", PRMTOP, CRD)).read().splitlines()
    atoms = [k for k, ln in enumerate(lines) if ln.startswith(("ATOM", "HETATM"))]
    a, b = atoms[0], atoms[1]  # HH31 (H) and CH3 (C) of ACE
    swapped = list(lines)
    swapped[a], swapped[b] = lines[b], lines[a]
    (tmp_path / "swapped.pdb").write_text("\n".join(swapped) + "\n")
    with pytest.raises(InputError, match=r"atom 0 of the PDB \(CH3, ACE\) is element 6 but the topology's atom 0 "
                                         r"\(HH31, residue ACE 1\) is element 1"):
        diffmd.load_amber(PRMTOP, str(tmp_path / "swapped.pdb"))
    (tmp_path / "short.pdb").write_text("\n".join(lines[:atoms[-1]]) + "\n")
    with pytest.raises(InputError, match="holds 21 atoms but the topology has 22"):
        diffmd.load_amber(PRMTOP, str(tmp_path / "short.pdb"))


def test_swapped_and_unknown_files_name_the_accepted_kinds(tmp_path, capsys):
    with pytest.raises(InputError, match=r"alanine-dipeptide\.crd: this is an Amber ASCII coordinate file .* the "
                                         r"prmtop argument must be an Amber prmtop.*were the two swapped"):
        diffmd.load_amber(CRD, PRMTOP)
    with pytest.raises(InputError, match=r"this is an Amber prmtop .* the coordinates argument must be an Amber "
                                         r"inpcrd/rst7/crd .* or a PDB file.*were the two swapped"):
        diffmd.load_amber(PRMTOP, PRMTOP)
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH 0 0.96 0\n")
    with pytest.raises(InputError, match=r"water\.xyz: this is a file of unknown kind, but the coordinates argument "
                                         r"must be an Amber inpcrd/rst7/crd \(ASCII\), an Amber NetCDF restart"):
        diffmd.load_amber(PRMTOP, str(xyz))
    with pytest.raises(InputError, match="the prmtop argument must be an Amber prmtop"):
        diffmd.load_amber(str(xyz), CRD)
    assert main(["energy", CRD, PRMTOP]) == 2
    assert "were the two swapped" in capsys.readouterr().err


# ----------------------------------------------------------------------------- NaN coordinates


def test_nan_coordinates_name_the_atom(tmp_path):
    lines = open(CRD).read().splitlines()
    lines[3] = lines[3][:12] + "         nan" + lines[3][24:]  # atom 2's y (two atoms per line)
    (tmp_path / "nan.crd").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"nan\.crd: positions contain NaN or Inf at 1 atom\(s\), the first at atom 2 "
                                         r"\(HH32, residue ACE 1\)"):
        diffmd.load_amber(PRMTOP, str(tmp_path / "nan.crd"))
    pdb = open(write_openmm_pdb(tmp_path / "ala.pdb", PRMTOP, CRD)).read().splitlines()
    k = [i for i, ln in enumerate(pdb) if ln.startswith(("ATOM", "HETATM"))][10]
    pdb[k] = pdb[k][:30] + "     nan" + pdb[k][38:]
    (tmp_path / "nan.pdb").write_text("\n".join(pdb) + "\n")
    with pytest.raises(InputError, match=r"the first at atom 10 \(CB, residue ALA 2\)"):
        diffmd.load_amber(PRMTOP, str(tmp_path / "nan.pdb"))
    system = diffmd.load_amber(PRMTOP, CRD)
    bad = system.positions.copy()
    bad[[14, 20], 0] = np.inf
    with pytest.raises(InputError, match=r"at 2 atom\(s\), the first at atom 14 \(C, residue ALA 2\)"):
        system.with_positions(bad)


# ----------------------------------------------------------------------------- -OO, precision


def test_imports_under_python_OO():
    code = ("import diffmd, diffmd.ensemble, diffmd.learn.train, diffmd.potentials.neural, diffmd.cli, diffmd.learn.datasets;"
            "from diffmd.kernels.gb import obc_energy; print(obc_energy.__doc__)")
    result = python("-OO", code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    doc = diffmd.kernels.gb.obc_energy.__doc__  # without -OO the shared argument list is filled in
    assert "__ARGS__" not in doc and "neighbors_idx: (N, K) int full neighbor table" in doc


def test_default_precisions_without_x64_raise_the_exact_fix():
    code = """
import jax, diffmd
assert not jax.config.read("jax_enable_x64")
system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
for call in (lambda: system.energy_fn(), lambda: diffmd.simulate(system, 1, out=None)):
    try:
        call()
    except diffmd.InputError as exc:
        print("InputError:", exc)
params, energy_fn = system.energy_fn(precision="single")
print("single:", params.charges.dtype)
"""
    result = python(code=code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fix = 'jax.config.update("jax_enable_x64", True)'
    assert lines[0].startswith("InputError: precision='double' needs float64") and fix in lines[0]
    assert lines[1].startswith("InputError: precision='mixed' needs float64") and fix in lines[1]
    assert 'precision="single"' in lines[0] and lines[2] == "single: float32"


def test_float64_model_traced_with_x64_off_raises():
    system = diffmd.load_amber(PRMTOP, CRD)
    params, energy_fn = system.energy_fn()  # double, built with x64 on (conftest)
    with jax.enable_x64(False):
        with pytest.raises(InputError, match=r"built for precision='double' \(float64\), but jax_enable_x64 is off"):
            energy_fn(params, system.positions)


# ----------------------------------------------------------------------------- GB radii


def prmtop_with_radii(path, radii_angstrom, radius_set):
    """A copy of the alanine dipeptide prmtop with other RADII and RADIUS_SET."""
    text = open(PRMTOP).read()
    body = "".join(f"{r:16.8E}" + ("\n" if (k + 1) % 5 == 0 else "") for k, r in enumerate(radii_angstrom))
    start = text.index("\n", text.index("%FORMAT", text.index("%FLAG RADII "))) + 1
    text = text[:start] + body.rstrip("\n") + "\n" + text[text.index("%FLAG", start):]
    start = text.index("\n", text.index("%FORMAT", text.index("%FLAG RADIUS_SET"))) + 1
    text = text[:start] + f"{radius_set:80s}\n" + text[text.index("%FLAG", start):]
    path.write_text(text)
    return str(path)


def gb_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "on-optimal GB parameters" in str(w.message)]


def test_gb_radii_warning_as_openmm(tmp_path):
    system = diffmd.load_amber(PRMTOP, CRD)
    z = system.topology.elements
    partner = {}
    for i, j in system.topology.bonds:
        partner.setdefault(int(i), int(j))
        partner.setdefault(int(j), int(i))
    # mbondi: hydrogens on carbon 1.3 A (mbondi2, the file's set, gives them 1.2)
    radii = np.asarray(system.params.gb_radii) * 10.0
    mbondi = np.where((z == 1) & (z[[partner[i] for i in range(len(z))]] == 6), 1.3, radii)
    assert np.sum(mbondi != radii) == 10
    mbondi_prmtop = prmtop_with_radii(tmp_path / "mbondi.prmtop", mbondi, "modified Bondi radii (mbondi)")
    for path, radius_set in ((PRMTOP, "mbondi2"), (mbondi_prmtop, "mbondi")):
        loaded = diffmd.load_amber(path, CRD)
        for model in ("obc2", "obc1", "hct"):
            ours = gb_warnings(lambda: loaded.energy_fn(implicit_solvent=model, precision="single"))
            theirs = gb_warnings(lambda: app.AmberPrmtopFile(path).createSystem(
                implicitSolvent={"obc2": app.OBC2, "obc1": app.OBC1, "hct": app.HCT}[model]))
            assert bool(ours) == bool(theirs), (path, model, ours, theirs)
            recommended = "mbondi" if model == "hct" else "mbondi2"
            if ours:
                assert len(ours) == 1
                assert re.search(rf"the prmtop has the ([a-z0-9]+ = )*{radius_set}( = [a-z0-9]+)* radii.*, but "
                                 rf"{model.upper()} was parametrized with {recommended}\.", ours[0]), ours[0]
                assert f"'set default PBradii {recommended}'" in ours[0] and "10 atom(s) differ" in ours[0]
