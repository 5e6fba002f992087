"""``diffmd prepare`` / ``diffmd.prepare``: PDB + SDF -> Amber files, checked against OpenMM on the same
prmtop, run in OBC2 (and TIP3P, slow), and every bad-input error.

Inputs are the bundled T4 lysozyme L99A receptor and p-xylene, written as a PDB and an SDF at test
time (``diffmd.workflows.write_t4_lysozyme_inputs``). Tests that build files need the ``prepare``
extra and skip with the install line when it is absent.
"""

import json
import os

import jax
import numpy as np
import pytest
from conftest import assert_energy_close, assert_forces_close

import diffmd
import diffmd.cli
from diffmd.workflows import INSTALL_HINT, MissingExtraError, missing_requirements

MISSING = missing_requirements()
needs_extra = pytest.mark.skipif(bool(MISSING), reason=f"needs the prepare extra ({INSTALL_HINT}); missing: "
                                                       f"{', '.join(MISSING)}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if MISSING:
        pytest.skip(f"needs the prepare extra ({INSTALL_HINT})")
    return diffmd.workflows.write_t4_lysozyme_inputs(str(tmp_path_factory.mktemp("inputs")))


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
    """The OBC2 complex, built through the command line."""
    out = str(tmp_path_factory.mktemp("obc2"))
    assert diffmd.cli.main(["prepare", *inputs, "--out", out]) == 0
    return out


def _openmm_reference(prmtop, inpcrd, **kw):
    from openmm_reference import energies_and_forces, openmm_system

    system, positions, box, _ = openmm_system(prmtop, inpcrd, **kw)
    return energies_and_forces(system, positions, box)


@needs_extra
def test_prepared_files_and_record(prepared):
    for name in ("complex", "receptor", "ligand"):
        assert os.path.getsize(os.path.join(prepared, f"{name}.prmtop")) > 0
        assert os.path.getsize(os.path.join(prepared, f"{name}.inpcrd")) > 0
    assert os.path.isfile(os.path.join(prepared, "complex.pdb"))
    with open(os.path.join(prepared, "prepare.json")) as fh:
        record = json.load(fh)
    complex_system = diffmd.load_amber(os.path.join(prepared, "complex.prmtop"),
                                       os.path.join(prepared, "complex.inpcrd"))
    bundled = diffmd.load_amber(*diffmd.data.t4_lysozyme("complex"))
    # the same molecule as the bundled tleap build: 2,603 receptor atoms (HIE 31) + 18 ligand atoms
    assert complex_system.n_atoms == bundled.n_atoms == record["complex"]["n_atoms"]
    lig = record["complex"]["ligand_atoms"]
    assert lig == list(range(2603, 2621))
    assert {complex_system.topology.residue_names[complex_system.topology.residue_index[i]] for i in lig} == {"LIG"}
    assert record["ligand"]["net_charge"] == 0 and record["ligand"]["smiles"] == "Cc1ccc(C)cc1"
    assert record["complex"]["net_charge_before_ions"] == pytest.approx(8.0, abs=1e-3)
    assert record["protein"]["protonation_states"] == {"HIS 31 chain A": "HIE"}
    assert record["solvent"] == {"model": "obc2", "gb_radii": "mbondi2"}
    assert record["options"]["protein_ff"] == "ff14SB" and record["tool_versions"]["rdkit"]
    # the pose is kept: ligand coordinates equal the bundled ones (inpcrd keeps 7 decimals in Angstrom)
    np.testing.assert_allclose(complex_system.positions[lig], bundled.positions[lig], atol=1e-6)
    # GB radii are mbondi2 (OBC2's), as in the bundled mbondi2 build of the same molecule
    np.testing.assert_allclose(np.asarray(complex_system.params.gb_radii), np.asarray(bundled.params.gb_radii))


@needs_extra
@pytest.mark.parametrize("part", ["complex", "receptor", "ligand"])
def test_energies_match_openmm_obc2(prepared, part):
    from openmm import app

    files = (os.path.join(prepared, f"{part}.prmtop"), os.path.join(prepared, f"{part}.inpcrd"))
    _, total, forces = _openmm_reference(*files, implicit_solvent=app.OBC2)
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(implicit_solvent="obc2", precision="double")
    nbrs = energy_fn.neighbor_list(system.positions)
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, None, nbrs)
    assert_energy_close(energy, total, 1e-6, what=f"{part} total")
    assert_forces_close(-np.asarray(grad), forces, 1e-6, what=f"{part} forces")


@needs_extra
@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_minimises_in_obc2_and_run_finds_the_ligand(prepared):
    files = (os.path.join(prepared, "complex.prmtop"), os.path.join(prepared, "complex.inpcrd"))
    system = diffmd.load_amber(*files)
    params, energy_fn = system.energy_fn(precision="double", implicit_solvent="obc2", nonbonded="cutoff", cutoff=1.0)
    nbrs = energy_fn.neighbor_list(system.positions)
    e0 = float(energy_fn(params, system.positions, None, nbrs))
    minimized = diffmd.minimize(energy_fn, params, system.positions, None, nbrs, max_iterations=200)
    assert minimized.energy < e0 - 1000.0  # kJ/mol: tleap's template hydrogens relax
    assert diffmd.workflows.ligand_for_run(files[0], None, system) == "LIG"  # from prepare.json


@pytest.mark.slow
@needs_extra
def test_prepared_complex_runs_stably_with_analysis(prepared, tmp_path):
    """The new user's path: diffmd prepare, then diffmd run on its folder, which finds the ligand in
    prepare.json and writes analysis.csv (about 10 minutes on a loaded 2-core machine)."""
    files = (os.path.join(prepared, "complex.prmtop"), os.path.join(prepared, "complex.inpcrd"))
    out = str(tmp_path / "run")
    assert diffmd.cli.main(["run", *files, "--implicit-solvent", "obc2", "--nonbonded", "cutoff", "--minimize",
                            "--steps", "200", "--report-every", "50", "--out", out, "--no-progress"]) == 0
    state = np.genfromtxt(os.path.join(out, "state.csv"), delimiter=",", names=True)
    assert np.all(np.isfinite(state["potential_kjmol"]))
    temperature = state[next(n for n in state.dtype.names if n.startswith("temperature"))]
    assert np.all(temperature[1:] < 400.0)
    cols = diffmd.workflows.read_analysis(os.path.join(out, "analysis.csv"))
    assert list(cols["step"]) == [0, 50, 100, 150, 200]
    assert np.all(cols["ligand_rmsd_nm"] < 0.2) and list(cols["stayed_bound"]) == [1] * 5  # stays in the cavity
    assert np.all(cols["e_int_kj_mol"] < 0)  # after minimisation the van der Waals contacts bind


@needs_extra
def test_ligand_without_hydrogens_and_interaction_energy(inputs, tmp_path):
    from rdkit import Chem

    pdb, sdf = inputs
    heavy = str(tmp_path / "heavy.sdf")
    mol = Chem.MolFromMolFile(sdf, removeHs=True)
    Chem.MolToMolFile(mol, heavy)
    result = diffmd.prepare(pdb, heavy, str(tmp_path / "out"), ligand_name="PXY")
    assert result.record["ligand"]["hydrogens_added"] == 10
    assert len(result.ligand_atoms) == 18
    complex_system, receptor, ligand = (result.load(p) for p in ("complex", "receptor", "ligand"))
    assert {complex_system.topology.residue_names[r] for r in complex_system.topology.residue_index[result.ligand_atoms]} == {"PXY"}
    inter = diffmd.interaction_energy(complex_system, receptor, ligand, implicit_solvent="obc2")
    for term in ("bond", "angle", "torsion", "coulomb14", "lennard_jones14"):
        assert abs(inter["terms"][term]) < 1e-6, term  # the three prmtops share the ligand's parameters
    # the heavy atoms stay where the SDF put them (the pose), hydrogens were added around them
    elements = complex_system.topology.elements[result.ligand_atoms]
    got = complex_system.positions[result.ligand_atoms][elements != 1]
    np.testing.assert_allclose(got, mol.GetConformer().GetPositions() * 0.1, atol=1e-6)


@pytest.mark.slow
@needs_extra
def test_tip3p_matches_openmm_and_runs(inputs, tmp_path):
    from diffmd import simulate

    result = diffmd.prepare(*inputs, str(tmp_path / "tip3p"), solvent="tip3p", padding=0.8, ionic_strength=0.1)
    rec = result.record
    assert rec["solvent"]["neutralising_ions"] == "8 Cl-" and rec["solvent"]["salt_pairs"] > 0
    files = result.files("complex")
    _, total, forces = _openmm_reference(*files, nonbonded="pme", cutoff=0.9)
    system = result.load()
    params, energy_fn = system.energy_fn(nonbonded="pme", cutoff=0.9, precision="double")
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, system.box, nbrs)
    assert_energy_close(energy, total, 1e-5, what="tip3p total")
    assert_forces_close(-np.asarray(grad), forces, 1e-5, what="tip3p forces")
    run = simulate(system, 100, dt=0.002, temperature=300.0, constraints="hbonds", nonbonded="pme", cutoff=0.9,
                   precision="mixed", minimize=True, minimize_max_iterations=200, report_every=50, seed=2,
                   progress=False, out=str(tmp_path / "run"))
    assert np.all(np.isfinite(run.potential_energy)) and np.all(run.temperature[1:] < 400.0)


# ---- bad input: each error names the file and the problem, before anything slow runs ----


def _sdf_from(mol, path):
    from rdkit import Chem

    Chem.MolToMolFile(mol, path)
    return path


@needs_extra
def test_sdf_without_3d_coordinates(inputs, tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles("Cc1ccc(C)cc1")
    AllChem.Compute2DCoords(mol)
    flat = _sdf_from(mol, str(tmp_path / "flat.sdf"))
    with pytest.raises(diffmd.InputError, match=r"flat\.sdf: the molecule has no 3D coordinates"):
        diffmd.prepare(inputs[0], flat, str(tmp_path / "out"))


@needs_extra
def test_sdf_with_several_molecules(inputs, tmp_path):
    two = tmp_path / "two.sdf"
    with open(inputs[1]) as fh:
        text = fh.read()
    two.write_text(text + text)
    with pytest.raises(diffmd.InputError, match=r"two\.sdf: holds 2 molecules"):
        diffmd.prepare(inputs[0], str(two), str(tmp_path / "out"))
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    with pytest.raises(diffmd.InputError, match=r"empty\.sdf: no molecule found"):
        diffmd.prepare(inputs[0], str(empty), str(tmp_path / "out"))


@needs_extra
def test_ligand_overlapping_the_protein(inputs, tmp_path):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.MolFromMolFile(inputs[1], removeHs=False)
    conf = mol.GetConformer()
    # move the ligand so its first carbon sits 0.5 A from the receptor's first atom (MET 1 N)
    with open(inputs[0]) as fh:
        line = next(ln for ln in fh if ln.startswith("ATOM"))
    target = np.array([float(line[30:38]), float(line[38:46]), float(line[46:54])]) + [0.5, 0.0, 0.0]
    shift = target - np.array(conf.GetAtomPosition(0))
    for k in range(mol.GetNumAtoms()):
        p = np.array(conf.GetAtomPosition(k)) + shift
        conf.SetAtomPosition(k, Point3D(*p))
    clash = _sdf_from(mol, str(tmp_path / "clash.sdf"))
    with pytest.raises(diffmd.InputError, match=r"clash\.sdf: the ligand overlaps the protein .* 0\.50 A from N of "
                                                r"MET 1"):
        diffmd.prepare(inputs[0], clash, str(tmp_path / "out"))


@needs_extra
def test_unfixable_residue_inside_the_chain(inputs, tmp_path):
    bad = tmp_path / "xyz.pdb"
    with open(inputs[0]) as fh:
        lines = [ln[:17] + "XYZ" + ln[20:] if ln.startswith("ATOM") and ln[22:26].strip() == "50" else ln
                 for ln in fh]
    bad.write_text("".join(lines))
    with pytest.raises(diffmd.InputError, match=r"xyz\.pdb: residue XYZ 50 \(chain A\) is not a standard amino acid"):
        diffmd.prepare(str(bad), inputs[1], str(tmp_path / "out"))


@needs_extra
def test_charge_that_cannot_be_inferred(inputs, tmp_path):
    from rdkit import Chem

    mol = Chem.MolFromMolFile(inputs[1], removeHs=False, sanitize=False)
    methyl = next(a for a in mol.GetAtoms() if a.GetAtomicNum() == 6 and a.GetDegree() == 4)
    methyl.SetAtomicNum(7)  # a four-bonded N with no formal charge: no valid valence
    bad = str(tmp_path / "n4.sdf")
    with open(bad, "w") as fh:
        fh.write(Chem.MolToMolBlock(mol, kekulize=False))
    with pytest.raises(diffmd.InputError, match=r"n4\.sdf: the ligand's charge cannot be inferred.*--ligand-charge"):
        diffmd.prepare(inputs[0], bad, str(tmp_path / "out"))
    with pytest.raises(diffmd.InputError, match=r"p-xylene\.sdf: --ligand-charge 1 contradicts the SDF"):
        diffmd.prepare(inputs[0], inputs[1], str(tmp_path / "out"), ligand_charge=1)


def test_bad_options_are_refused_before_any_work(tmp_path):
    with pytest.raises(diffmd.InputError, match="solvent must be one of obc2, tip3p"):
        diffmd.prepare("p.pdb", "l.sdf", str(tmp_path), solvent="tip4p")
    with pytest.raises(diffmd.InputError, match="padding applies to --solvent tip3p only"):
        diffmd.prepare("p.pdb", "l.sdf", str(tmp_path), padding=1.2)
    with pytest.raises(diffmd.InputError, match="ligand residue name"):
        diffmd.prepare("p.pdb", "l.sdf", str(tmp_path), ligand_name="LIGAND")


def test_missing_extra_names_the_pip_install(monkeypatch, tmp_path, capsys):
    import diffmd.workflows._deps as deps

    monkeypatch.setattr(deps, "find_program", lambda name: None)
    with pytest.raises(MissingExtraError, match=r'AmberTools program antechamber.*pip install "diffmd\[prepare\]"'):
        diffmd.prepare("p.pdb", "l.sdf", str(tmp_path))
    assert diffmd.cli.main(["prepare", "p.pdb", "l.sdf", "--out", str(tmp_path)]) == 2
    assert 'pip install "diffmd[prepare]"' in capsys.readouterr().err
