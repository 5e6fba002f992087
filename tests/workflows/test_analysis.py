"""Pose, pocket and interaction analysis (``diffmd.workflows``): exact geometry on constructed frames,
JAX transforms, MDTraj as the reference for RMSF, contacts and hydrogen bonds, the interaction energy
against ``diffmd.interaction_energy``, and ``diffmd run --ligand`` writing ``analysis.csv``."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
import diffmd.cli
from diffmd import workflows as wf


def _rotation(angle, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@pytest.fixture(scope="module")
def t4l():
    return diffmd.load_amber(*diffmd.data.t4_lysozyme("complex"))


@pytest.fixture(scope="module")
def cb7():
    return diffmd.load_amber(*diffmd.data.cb7_b2("complex-vacuum"))


def _frames(system, ligand, shifts, seed=0):
    """Frame 0 as loaded; frame k: ligand moved by shifts[k] [nm], then the whole system rotated and translated."""
    x0 = system.positions
    frames = [x0]
    rng = np.random.default_rng(seed)
    for shift in shifts[1:]:
        x = x0.copy()
        x[ligand] += shift
        rot = _rotation(rng.uniform(0, np.pi), rng.normal(size=3))
        frames.append(x @ rot.T + rng.normal(size=3))
    return np.stack(frames)


def test_rmsd_displacement_and_bound_flags_on_constructed_frames(t4l):
    lig = wf.ligand_atoms(t4l.topology, "TMP")
    assert list(lig) == list(range(2603, 2621))
    shifts = [np.zeros(3), np.zeros(3), np.array([0.3, 0.0, 0.0]), np.array([0.0, 6.0, 0.0])]
    frames = _frames(t4l, lig, shifts)
    result = wf.analyse(t4l, frames, "TMP", steps=[0, 10, 20, 30], times_ps=[0.0, 0.02, 0.04, 0.06],
                        interaction=False)
    cols = result["columns"]
    # rigid motion of the whole system: no RMSD; a rigid ligand shift of d: RMSD = displacement = d
    np.testing.assert_allclose(cols["ligand_rmsd_nm"], [0.0, 0.0, 0.3, 6.0], atol=1e-9)
    np.testing.assert_allclose(cols["ligand_displacement_nm"], [0.0, 0.0, 0.3, 6.0], atol=1e-9)
    assert list(cols["bound"]) == [1, 1, 1, 0] and list(cols["stayed_bound"]) == [1, 1, 1, 0]
    assert cols["n_contact_residues"][0] > 5 and cols["n_contact_residues"][3] == 0
    assert "LEU84" in cols["contact_residues"][0].split(";")  # a cavity residue of L99A
    assert list(cols["n_hbonds"]) == [0, 0, 0, 0]  # p-xylene has no polar atoms
    assert "LEU84" in result["pocket_residues"] and result["summary"]["stayed_bound"] is False
    # rigid frames: the pocket does not fluctuate
    np.testing.assert_allclose(result["pocket_rmsf_nm"][:2], 0.0, atol=1e-9)
    with pytest.raises(diffmd.InputError, match="no residue named 'LIG'.*TMP"):
        wf.analyse(t4l, frames, "LIG")


def test_rmsd_is_a_jax_function(t4l):
    lig = wf.ligand_atoms(t4l.topology, "TMP")
    rec = wf.receptor_atoms(t4l.topology, lig)
    x0 = jnp.asarray(t4l.positions)
    align = wf.alignment_atoms(t4l.topology, t4l.positions, lig, rec)
    rng = np.random.default_rng(1)
    frames = x0[None] + 0.01 * jnp.asarray(rng.normal(size=(3, t4l.n_atoms, 3)))
    f = jax.jit(lambda x: wf.ligand_rmsd(x, x0, lig, align))
    batched = f(frames)
    np.testing.assert_allclose(batched, [f(x) for x in frames], rtol=1e-12)
    grad = jax.grad(lambda x: wf.ligand_rmsd(x, x0, lig, align))(frames[0])
    assert np.all(np.isfinite(grad))
    direction = jnp.asarray(rng.normal(size=x0.shape))
    h = 1e-6
    fd = (f(frames[0] + h * direction) - f(frames[0] - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=1e-5)


def _mdtraj(system, frames, prmtop):
    md = pytest.importorskip("mdtraj")
    return md, md.Trajectory(np.asarray(frames, np.float32), md.load_prmtop(prmtop))


def test_rmsf_and_contacts_match_mdtraj(t4l):
    lig = wf.ligand_atoms(t4l.topology, "TMP")
    rec = wf.receptor_atoms(t4l.topology, lig)
    rng = np.random.default_rng(2)
    frames = _frames(t4l, lig, [np.zeros(3)] * 4, seed=3) + 0.02 * rng.normal(size=(4, t4l.n_atoms, 3))
    md, traj = _mdtraj(t4l, frames, diffmd.data.t4_lysozyme("complex")[0])
    align = wf.alignment_atoms(t4l.topology, frames[0], lig, rec)
    atoms = np.arange(0, 2603, 7)
    # superposed by MDTraj on the same atoms, MDTraj's RMSF about the mean equals ours
    fitted = traj.superpose(traj, 0, atom_indices=align)
    want = md.rmsf(fitted, None, atom_indices=atoms)
    np.testing.assert_allclose(wf.rmsf(frames, atoms, align), want, atol=3e-6)  # MDTraj works in float32
    n_pairs, residues = wf.contacts(t4l.topology, frames, lig, rec)
    lig_res = int(t4l.topology.residue_index[lig[0]])
    pairs = [(r, lig_res) for r in range(lig_res)]
    dist, _ = md.compute_contacts(traj, pairs, scheme="closest-heavy")
    for k in range(len(frames)):
        np.testing.assert_array_equal(residues[k], np.flatnonzero(dist[k] < 0.4))
    assert np.all(n_pairs > 0)


def test_hydrogen_bonds_match_mdtraj_baker_hubbard(cb7):
    lig = wf.ligand_atoms(cb7.topology, "B2")
    rec = wf.receptor_atoms(cb7.topology, lig)
    rng = np.random.default_rng(4)
    frames = cb7.positions[None] + 0.01 * rng.normal(size=(6, cb7.n_atoms, 3))
    md, traj = _mdtraj(cb7, frames, diffmd.data.cb7_b2("complex-vacuum")[0])
    got = wf.hydrogen_bonds(cb7.topology, frames, lig, rec)
    in_lig = set(lig.tolist())
    total = 0
    for k in range(len(frames)):
        ref = md.baker_hubbard(traj[k], freq=0.0, exclude_water=True)
        cross = {tuple(int(v) for v in t) for t in ref if (t[0] in in_lig) != (t[2] in in_lig)}
        assert set(got[k]) == cross, k
        total += len(cross)
    assert total > 0  # the guest's ammonium hydrogens bond to CB7's carbonyl oxygens


def test_interaction_energies_match_interaction_energy(t4l):
    files = [diffmd.data.t4_lysozyme(p) for p in ("receptor", "ligand")]
    receptor, ligand = (diffmd.load_amber(f[0]) for f in files)
    lig = wf.ligand_atoms(t4l.topology, "TMP")
    rec = wf.receptor_atoms(t4l.topology, lig)
    rng = np.random.default_rng(5)
    frames = t4l.positions[None] + 0.005 * rng.normal(size=(2, t4l.n_atoms, 3))
    got = wf.interaction_energies(t4l, frames, lig, rec, implicit_solvent="obc2")
    for k, x in enumerate(frames):
        want = diffmd.interaction_energy(t4l, receptor, ligand, x, implicit_solvent="obc2")
        t = want["terms"]
        np.testing.assert_allclose(got["coulomb"][k], t["coulomb"], rtol=1e-9, atol=1e-8)
        np.testing.assert_allclose(got["lj"][k], t["lennard_jones"], rtol=1e-9, atol=1e-8)
        np.testing.assert_allclose(got["gb"][k], t["generalized_born"] + t["surface_area"], rtol=1e-9, atol=1e-8)
        # the bundled complex's torsions differ slightly from the separate receptor prmtop's (0.09 kJ/mol);
        # cut from the complex itself, bonded terms cancel exactly
        np.testing.assert_allclose(got["total"][k], got["coulomb"][k] + got["lj"][k] + got["gb"][k], atol=1e-8)


def test_subset_system_equals_the_separate_prmtop():
    complex_system = diffmd.load_amber(*diffmd.data.cb7_b2("complex-vacuum"))
    lig = wf.ligand_atoms(complex_system.topology, "B2")
    part = wf.subset_system(complex_system, lig)
    ligand = diffmd.load_amber(*diffmd.data.cb7_b2("ligand"))
    assert part.n_atoms == ligand.n_atoms
    p1, f1 = part.energy_fn(precision="double")
    p2, f2 = ligand.energy_fn(precision="double")
    t1, t2 = f1.terms(p1, part.positions), f2.terms(p2, part.positions)
    for k in t2:
        np.testing.assert_allclose(float(t1[k]), float(t2[k]), rtol=1e-9, atol=1e-8, err_msg=k)


def test_run_with_ligand_writes_analysis_csv(tmp_path, capsys):
    prmtop, crd = diffmd.data.cb7_b2("complex-vacuum")
    out = str(tmp_path / "run")
    assert diffmd.cli.main(["run", prmtop, crd, "--steps", "20", "--report-every", "10", "--precision", "double",
                            "--ligand", "B2", "--out", out, "--no-progress", "--minimize"]) == 0
    cols = wf.read_analysis(os.path.join(out, "analysis.csv"))
    assert list(cols["step"]) == [0, 10, 20]
    np.testing.assert_allclose(cols["time_ps"], [0.0, 0.02, 0.04])
    assert cols["ligand_rmsd_nm"][0] < 1e-9 and np.all(cols["ligand_rmsd_nm"][1:] < 0.1)
    assert list(cols["stayed_bound"]) == [1, 1, 1]
    assert np.all(cols["e_int_kj_mol"] < 0) and np.all(cols["e_int_gb_kj_mol"] == 0)
    assert os.path.isfile(os.path.join(out, "pocket_rmsf.csv")) and os.path.isfile(os.path.join(out, "analysis.json"))
    assert "analysis.csv" in capsys.readouterr().out
    # an unknown ligand name is refused before the run starts
    assert diffmd.cli.main(["run", prmtop, crd, "--steps", "10", "--ligand", "LIG", "--out", str(tmp_path / "x"),
                            "--no-progress"]) == 2
    assert "--ligand LIG: no residue named 'LIG'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "trajectory.dcd")


def test_ensemble_run_with_ligand_writes_analysis_per_member(tmp_path, capsys):
    prmtop, crd = diffmd.data.cb7_b2("complex-vacuum")
    out = str(tmp_path / "ens")
    assert diffmd.cli.main(["run", prmtop, crd, "--replicas", "2", "--steps", "20", "--report-every", "10",
                            "--precision", "double", "--ligand", "B2", "--out", out, "--no-progress"]) == 0
    for m in range(2):
        cols = wf.read_analysis(os.path.join(out, f"member-{m:03d}", "analysis.csv"))
        assert list(cols["step"]) == [0, 10, 20] and cols["ligand_rmsd_nm"][0] < 1e-9
    assert "analysis.csv" in capsys.readouterr().out
