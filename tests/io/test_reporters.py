"""Output side of the runner: PDB, DCD and extended XYZ writers, state.csv, NaN check, progress.

Files are read back with independent readers (MDTraj for PDB and DCD, ASE for extended XYZ).
"""

import dataclasses
import io
import struct

import numpy as np
import pytest

import diffmd
from diffmd import InputError, SimulationError
from diffmd.io._dcd import DCDWriter, read_dcd
from diffmd.io._pdb import box_lengths_angles, format_pdb, write_pdb
from diffmd.io._xyz import read_extxyz, write_extxyz
from diffmd.kernels.constants import EV
from diffmd.io import (
    FramesReporter,
    DCDReporter, ExtXYZReporter, ProgressReporter, RunInfo, Snapshot, StateDataReporter, dispatch,
)

md = pytest.importorskip("mdtraj")
ase_io = pytest.importorskip("ase.io")

# PDB coordinates have 3 decimals in Angstrom (5e-5 nm); MDTraj holds float32 nm
PDB_ATOL_NM = 5.0e-5 + 1e-6


@pytest.fixture(scope="module")
def waterbox():
    return diffmd.load_amber(*diffmd.data.water_box())  # triclinic, 648 atoms


@pytest.fixture(scope="module")
def solvated():
    return diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())  # TIP3P box, orthorhombic


@pytest.fixture(scope="module")
def t4l():
    return diffmd.load_amber(*diffmd.data.t4_lysozyme())  # protein + p-xylene, no box


def _bond_set(bonds):
    return {frozenset((int(i), int(j))) for i, j in bonds}


def _mdtraj_bonds(traj):
    return {frozenset((b[0].index, b[1].index)) for b in traj.topology.bonds}


def _snapshots(system, steps, dt=0.002, seed=0):
    rng = np.random.default_rng(seed)
    for k, step in enumerate(steps):
        pos = system.positions + 0.01 * rng.normal(size=system.positions.shape)
        yield Snapshot(step=step, time_ps=step * dt, positions=pos, potential_energy=-1000.0 - k,
                       kinetic_energy=500.0 + k, temperature=300.0 + k, box=system.box,
                       forces=rng.normal(size=system.positions.shape) * 100.0)


def test_box_lengths_angles_triclinic(waterbox):
    lengths, angles = box_lengths_angles(waterbox.box)
    from diffmd.io._coords import box_from_lengths_angles

    np.testing.assert_allclose(box_from_lengths_angles(lengths, angles), waterbox.box, atol=1e-12)


@pytest.mark.parametrize("conect", ["hetero", "all"])
def test_pdb_roundtrip_mdtraj_triclinic_water(tmp_path, waterbox, conect):
    path = tmp_path / "water.pdb"
    write_pdb(path, waterbox.topology, waterbox.positions, waterbox.box, conect=conect)
    traj = md.load_pdb(str(path))
    assert traj.n_atoms == waterbox.n_atoms
    np.testing.assert_allclose(traj.xyz[0], waterbox.positions, atol=PDB_ATOL_NM)
    lengths, angles = box_lengths_angles(waterbox.box)
    np.testing.assert_allclose(traj.unitcell_lengths[0], lengths, atol=5e-5 + 1e-6)
    np.testing.assert_allclose(traj.unitcell_angles[0], angles, atol=5e-3 + 1e-4)
    np.testing.assert_allclose(traj.unitcell_vectors[0], waterbox.box, atol=2e-4)
    # water is HETATM, so every bond (including the rigid-water H-H) is in CONECT records
    assert _mdtraj_bonds(traj) == _bond_set(waterbox.topology.bonds)
    elements = [a.element.atomic_number for a in traj.topology.atoms]
    np.testing.assert_array_equal(elements, waterbox.topology.elements)


def test_pdb_protein_ligand_records_and_bonds(tmp_path, t4l):
    path = tmp_path / "t4l.pdb"
    write_pdb(path, t4l.topology, t4l.positions)
    lines = path.read_text().splitlines()
    atoms = [ln for ln in lines if ln.startswith(("ATOM  ", "HETATM"))]
    assert len(atoms) == t4l.n_atoms and not any(ln.startswith("CRYST1") for ln in lines)
    hetero = [ln for ln in atoms if ln.startswith("HETATM")]
    assert {ln[17:20] for ln in hetero} == {"TMP"}  # only the ligand
    assert sum(ln.startswith("TER") for ln in lines) == 2  # protein chain, ligand chain
    conect = [ln for ln in lines if ln.startswith("CONECT")]
    assert conect, "ligand bonds must be written"
    # fixed columns: element right-justified in 77-78, x in 31-38 (Angstrom)
    first = atoms[0]
    assert first[76:78].strip() == "N" and abs(float(first[30:38]) - 10 * t4l.positions[0, 0]) < 6e-4
    traj = md.load_pdb(str(path))
    assert traj.n_atoms == t4l.n_atoms
    np.testing.assert_allclose(traj.xyz[0], t4l.positions, atol=PDB_ATOL_NM)
    # standard residues get template bonds, the ligand its CONECT bonds: together all of them
    assert _mdtraj_bonds(traj) == _bond_set(t4l.topology.bonds)


def test_pdb_rejects_bad_input(t4l):
    with pytest.raises(InputError, match="shape"):
        format_pdb(t4l.topology, t4l.positions[:-1])
    bad = t4l.positions.copy()
    bad[7, 1] = np.nan
    with pytest.raises(InputError, match="atom 7"):
        format_pdb(t4l.topology, bad)
    with pytest.raises(InputError, match="range"):
        format_pdb(t4l.topology, t4l.positions + 2000.0)


def _water_top(system):
    """An MDTraj topology with the system's atoms (DCD files carry none)."""
    top = md.Topology()
    chain = top.add_chain()
    res = None
    for i in range(system.n_atoms):
        r = int(system.topology.residue_index[i])
        if res is None or res.index != r:
            res = top.add_residue(system.topology.residue_names[r], chain)
        element = md.element.Element.getByAtomicNumber(int(system.topology.elements[i]))
        top.add_atom(system.topology.atom_names[i], element, res)
    return top


def test_dcd_roundtrip_mdtraj_triclinic(tmp_path, waterbox):
    path = tmp_path / "traj.dcd"
    frames = [s.positions for s in _snapshots(waterbox, range(3))]
    with DCDWriter(path, waterbox.n_atoms, dt_ps=0.002, interval=10, periodic=True) as dcd:
        for pos in frames:
            dcd.write_frame(pos, waterbox.box)
    traj = md.load_dcd(str(path), top=_water_top(waterbox))
    assert traj.n_frames == 3
    np.testing.assert_allclose(traj.xyz, np.array(frames), atol=2e-6)  # float32 Angstrom
    lengths, angles = box_lengths_angles(waterbox.box)
    np.testing.assert_allclose(traj.unitcell_lengths, np.tile(lengths, (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(traj.unitcell_angles, np.tile(angles, (3, 1)), atol=1e-5)
    np.testing.assert_allclose(traj.unitcell_vectors[0], waterbox.box, atol=1e-5)
    positions, cells, info = read_dcd(path)
    np.testing.assert_allclose(positions, np.array(frames), atol=2e-6)
    assert info["n_frames"] == 3 and info["interval"] == 10 and cells.shape == (3, 6)
    np.testing.assert_allclose(info["dt_ps"], 0.002, rtol=1e-6)  # float32 in AKMA units


def test_dcd_reopen_append_and_crash_tail(tmp_path, waterbox):
    path = tmp_path / "traj.dcd"
    frames = [s.positions for s in _snapshots(waterbox, range(6))]
    with DCDWriter(path, waterbox.n_atoms, periodic=True) as dcd:
        for pos in frames[:4]:
            dcd.write_frame(pos, waterbox.box)
    with open(path, "ab") as fh:  # a frame cut short by a crash
        fh.write(b"\x00" * 100)
    with pytest.raises(InputError, match="atoms"):
        DCDWriter.reopen(path, waterbox.n_atoms + 1)
    with DCDWriter.reopen(path, waterbox.n_atoms, keep_frames=3) as dcd:  # back to a checkpoint
        assert dcd.n_frames == 3
        for pos in frames[4:]:
            dcd.write_frame(pos, waterbox.box)
    with open(path, "rb") as fh:
        fh.seek(8)
        assert struct.unpack("<i", fh.read(4))[0] == 5  # header count
    traj = md.load_dcd(str(path), top=_water_top(waterbox))
    assert traj.n_frames == 5
    np.testing.assert_allclose(traj.xyz, np.array(frames[:3] + frames[4:]), atol=2e-6)


def test_dcd_reporter_resume_from_checkpoint(tmp_path, waterbox):
    path = tmp_path / "traj.dcd"
    run = RunInfo(n_atoms=waterbox.n_atoms, dt_ps=0.002, periodic=True)
    snaps = list(_snapshots(waterbox, range(0, 600, 100)))
    with DCDReporter(path, 100) as rep:
        rep.open(run)
        for s in snaps[:5]:  # steps 0..400; a checkpoint was taken at 300, then a crash
            rep.report(s)
    with DCDReporter(path, 100, append=True) as rep:
        rep.open(RunInfo(n_atoms=waterbox.n_atoms, dt_ps=0.002, periodic=True, start_step=300))
        for s in snaps[3:]:  # the resumed run reports 300 (skipped: already there), 400, 500
            rep.report(s)
        with pytest.raises(InputError, match="evenly spaced"):
            rep.report(next(_snapshots(waterbox, [700])))
    positions, _, info = read_dcd(path)
    assert info["n_frames"] == 6
    np.testing.assert_allclose(positions, np.array([s.positions for s in snaps]), atol=2e-6)


def test_extxyz_ase_roundtrip(tmp_path, waterbox):
    path = tmp_path / "data.xyz"
    rep = ExtXYZReporter(path, 10)
    rep.open(RunInfo(n_atoms=waterbox.n_atoms, dt_ps=0.002, topology=waterbox.topology, periodic=True))
    snaps = list(_snapshots(waterbox, [0, 10]))
    for s in snaps:
        rep.report(s)
    rep.close()
    images = ase_io.read(str(path), index=":")
    assert len(images) == 2
    for atoms, s in zip(images, snaps):
        assert atoms.get_chemical_symbols()[:3] == ["O", "H", "H"]
        assert atoms.pbc.all()
        np.testing.assert_allclose(atoms.get_potential_energy(), s.potential_energy / EV, rtol=1e-14)
        np.testing.assert_allclose(atoms.get_forces(), s.forces / EV / 10.0, atol=5e-9)  # eV/Angstrom
        np.testing.assert_allclose(atoms.positions, s.positions * 10.0, atol=5e-9)  # Angstrom
        np.testing.assert_allclose(atoms.cell[:], waterbox.box * 10.0, atol=1e-10)
        assert atoms.info["step"] == s.step
    back = read_extxyz(path)
    np.testing.assert_allclose(back[1].energy, snaps[1].potential_energy, rtol=1e-14)
    np.testing.assert_allclose(back[1].forces, snaps[1].forces, atol=0.5e-8 * EV * 10 * 1.01)  # 8 decimals
    np.testing.assert_allclose(back[1].positions, snaps[1].positions, atol=0.51e-9)
    np.testing.assert_allclose(back[1].box, waterbox.box, atol=1e-11)


def test_read_extxyz_written_by_ase(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=-14.2, forces=np.arange(9.0).reshape(3, 3))
    ase_io.write(str(tmp_path / "ase.xyz"), atoms, format="extxyz")
    (frame,) = read_extxyz(tmp_path / "ase.xyz")
    assert frame.symbols == ("O", "H", "H") and frame.box is None
    np.testing.assert_allclose(frame.energy, -14.2 * EV)
    np.testing.assert_allclose(frame.forces, np.arange(9.0).reshape(3, 3) * EV * 10.0)
    np.testing.assert_allclose(frame.positions[1], [0.096, 0, 0])


def test_extxyz_nonperiodic(tmp_path):
    write_extxyz(tmp_path / "a.xyz", ["C", "O"], [[0, 0, 0], [0.113, 0, 0]], energy=-1.0)
    atoms = ase_io.read(str(tmp_path / "a.xyz"))
    assert not atoms.pbc.any() and "forces" not in atoms.arrays
    np.testing.assert_allclose(atoms.get_potential_energy(), -1.0 / EV)


def test_state_csv_header_and_rows(tmp_path, solvated, t4l):
    path = tmp_path / "state.csv"
    rep = StateDataReporter(path, 10)
    rep.open(RunInfo(n_atoms=solvated.n_atoms, dt_ps=0.002, periodic=True, masses=solvated.masses))
    for s in _snapshots(solvated, [0, 10, 20]):
        rep.report(s)
    rep.close()
    lines = path.read_text().splitlines()
    assert lines[0] == ("step,time_ps,potential_kjmol,kinetic_kjmol,total_kjmol,temperature_k,"
                        "volume_nm3,density_gcm3,ns_per_day")
    first = lines[1].split(",")
    assert first[0] == "0" and float(first[1]) == 0.0
    assert float(first[2]) == -1000.0 and float(first[3]) == 500.0 and float(first[4]) == -500.0
    assert float(first[5]) == 300.0 and first[8] == "nan"
    volume = float(first[6])
    np.testing.assert_allclose(volume, np.linalg.det(solvated.box), rtol=1e-6)
    # density from the atomic mass unit in grams (CODATA 2018) and 1 nm^3 = 1e-21 cm^3
    grams = solvated.masses.sum() * 1.66053906660e-24
    np.testing.assert_allclose(float(first[7]), grams / (volume * 1e-21), rtol=1e-5)
    third = lines[3].split(",")
    assert third[0] == "20" and float(third[1]) == 0.04 and float(third[8]) > 0
    # non-periodic: no volume or density
    rep = StateDataReporter(tmp_path / "vac.csv", 10)
    rep.open(RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002))
    rep.close()
    assert (tmp_path / "vac.csv").read_text().strip().split(",") == [
        "step", "time_ps", "potential_kjmol", "kinetic_kjmol", "total_kjmol", "temperature_k", "ns_per_day"]


def test_state_csv_append_after_restart(tmp_path, t4l):
    path = tmp_path / "state.csv"
    run = RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002)
    snaps = list(_snapshots(t4l, [0, 10, 20, 30]))
    with StateDataReporter(path, 10) as rep:
        rep.open(run)
        for s in snaps[:3]:
            rep.report(s)
    with StateDataReporter(path, 10, append=True) as rep:
        rep.open(RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002, start_step=10))
        for s in snaps[1:]:
            rep.report(s)
    steps = [int(ln.split(",")[0]) for ln in path.read_text().splitlines()[1:]]
    assert steps == [0, 10, 20, 30]


def test_nan_check_raises_and_keeps_earlier_frames(tmp_path, waterbox):
    run = RunInfo(n_atoms=waterbox.n_atoms, dt_ps=0.002, periodic=True, masses=waterbox.masses,
                  topology=waterbox.topology)
    reps = [StateDataReporter(tmp_path / "state.csv", 10), DCDReporter(tmp_path / "t.dcd", 10),
            ExtXYZReporter(tmp_path / "t.xyz", 10)]
    for r in reps:
        r.open(run)
    good = list(_snapshots(waterbox, [0, 10, 20]))
    for s in good[:2]:
        dispatch(reps, s)
    pos = good[2].positions.copy()
    pos[5, 0] = np.nan
    bad = Snapshot(step=20, time_ps=0.04, positions=pos, potential_energy=np.inf, kinetic_energy=1.0,
                   temperature=1.0, box=waterbox.box, forces=good[2].forces)
    with pytest.raises(SimulationError) as err:
        dispatch(reps, bad)
    message = str(err.value)
    assert "step 20" in message and "atom 5" in message
    assert "time step" in message and "minimize" in message
    # nothing closed yet (as mid-run): files already hold the two good reports, readable
    assert len((tmp_path / "state.csv").read_text().splitlines()) == 3
    assert md.load_dcd(str(tmp_path / "t.dcd"), top=_water_top(waterbox)).n_frames == 2
    assert len(ase_io.read(str(tmp_path / "t.xyz"), index=":")) == 2
    for r in reps:
        r.close()


def test_progress_bar_shows_speed_only_when_enabled():
    run = RunInfo(n_atoms=3, dt_ps=0.002, total_steps=1000)
    snap = Snapshot(step=500, time_ps=1.0, positions=np.zeros((3, 3)), potential_energy=0.0,
                    kinetic_energy=0.0, temperature=0.0)
    shown, hidden = io.StringIO(), io.StringIO()
    for stream, enabled in ((shown, True), (hidden, None)):  # StringIO is not a terminal
        rep = ProgressReporter(100, enabled=enabled, file=stream)
        rep.open(run)
        rep.report(snap)
        rep.close()
    assert "ns/day" in shown.getvalue() and "500/1000" in shown.getvalue()
    assert hidden.getvalue() == ""


def test_pdb_two_letter_elements_and_names(tmp_path):
    from diffmd import Topology

    top = Topology(atom_names=("Cl-", "Na+", "FE", "C1", "HA12"), elements=np.array([17, 11, 26, 6, 1]),
                   residue_index=np.array([0, 1, 2, 2, 2]), residue_names=("Cl-", "Na+", "HEM"),
                   chain_index=np.array([0, 1, 2]), bonds=np.array([[2, 3], [3, 4]]))
    positions = np.array([[0.1, 0.2, 0.3], [1.0, 1.1, 1.2], [2.0, 2.0, 2.0], [2.2, 2.0, 2.0], [2.3, 2.0, 2.0]])
    write_pdb(tmp_path / "ions.pdb", top, positions)
    lines = [ln for ln in (tmp_path / "ions.pdb").read_text().splitlines() if ln.startswith("HETATM")]
    assert [ln[76:78] for ln in lines] == ["CL", "NA", "FE", " C", " H"]
    assert [ln[12:16] for ln in lines] == ["Cl- ", "Na+ ", "FE  ", " C1 ", "HA12"]
    traj = md.load_pdb(str(tmp_path / "ions.pdb"))
    assert [a.element.atomic_number for a in traj.topology.atoms] == [17, 11, 26, 6, 1]
    assert _mdtraj_bonds(traj) == _bond_set(top.bonds)
    np.testing.assert_allclose(traj.xyz[0], positions, atol=PDB_ATOL_NM)


def test_extxyz_reporter_resume_cuts_later_and_partial_frames(tmp_path, t4l):
    path = tmp_path / "t.xyz"
    snaps = list(_snapshots(t4l, [0, 10, 20, 30]))
    run = RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002, topology=t4l.topology)
    with ExtXYZReporter(path, 10) as rep:
        rep.open(run)
        for s in snaps[:3]:
            rep.report(s)
    with open(path, "a") as fh:  # a frame cut short by a crash
        fh.write(f"{t4l.n_atoms}\nProperties=species:S:1:pos:R:3 step=30\nN 1.0 2.0")
    with ExtXYZReporter(path, 10, append=True) as rep:
        rep.open(RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002, topology=t4l.topology, start_step=20))
        for s in snaps[2:]:  # 20 is already there; the partial frame is gone
            rep.report(s)
    assert [a.info["step"] for a in ase_io.read(str(path), index=":")] == [0, 10, 20, 30]
    with ExtXYZReporter(path, 10, append=True) as rep:  # back to a checkpoint at step 10
        rep.open(RunInfo(n_atoms=t4l.n_atoms, dt_ps=0.002, topology=t4l.topology, start_step=10))
    assert [a.info["step"] for a in ase_io.read(str(path), index=":")] == [0, 10]


def _final(snapshot):
    return dataclasses.replace(snapshot, final=True)


def test_final_step_between_intervals_is_written_and_cut_off_on_resume(tmp_path, waterbox):
    """A run of 25 steps reported every 10 ends its files at 25; resumed (from a checkpoint at 25, or
    at 20 after a kill) the files hold the evenly spaced records only, then continue. Rows, frames
    and XYZ frames cut short by a kill are dropped too."""
    n = waterbox.n_atoms
    run = RunInfo(n_atoms=n, dt_ps=0.002, periodic=True, masses=waterbox.masses, topology=waterbox.topology)
    snaps = list(_snapshots(waterbox, [0, 10, 20, 25, 30, 40]))
    paths = tmp_path / "state.csv", tmp_path / "t.dcd", tmp_path / "t.xyz"

    def reporters(append):
        return [StateDataReporter(paths[0], 10, append=append), DCDReporter(paths[1], 10, append=append),
                ExtXYZReporter(paths[2], 10, append=append)]

    def steps_in_files():
        csv_steps = [int(line.split(",")[0]) for line in paths[0].read_text().splitlines()[1:]]
        xyz_steps = [f.info["step"] for f in read_extxyz(paths[2])]
        return csv_steps, read_dcd(paths[1])[2], xyz_steps

    reps = reporters(False)
    for r in reps:
        r.open(run)
    for s in snaps[:3]:
        dispatch(reps, s)
    with pytest.raises(InputError, match="evenly spaced"):  # only a final step may fall between intervals
        reps[1].report(snaps[3])
    dispatch(reps, _final(snaps[3]))
    for r in reps:
        r.close()
    csv_steps, info, xyz_steps = steps_in_files()
    assert csv_steps == [0, 10, 20, 25] and xyz_steps == [0, 10, 20, 25]
    assert info["n_frames"] == 4 and info["last_step"] == 25
    assert md.load_dcd(str(paths[1]), top=md.load(str(_water_pdb(tmp_path, waterbox))).topology).n_frames == 4
    with DCDWriter.reopen(paths[1], n) as w, pytest.raises(InputError, match="final step 25"):
        w.write_frame(snaps[4].positions, waterbox.box)
    for a, b in ((paths[0], b"30,0.06"), (paths[2], b"648\nLattice")):  # records cut short by a kill
        with open(a, "ab") as fh:
            fh.write(b)
    with open(paths[1], "ab") as fh:
        fh.write(b"\x00" * 64)

    for start in (25, 20):  # a longer run resumed from its checkpoint at 25, or at 20 (killed before 25's)
        reps = reporters(True)
        for r in reps:
            r.open(dataclasses.replace(run, start_step=start))
        for r in reps:
            r.close()
        csv_steps, info, xyz_steps = steps_in_files()
        assert csv_steps == [0, 10, 20] and xyz_steps == [0, 10, 20]
        assert info["n_frames"] == 3 and info["last_step"] == 20
    reps = reporters(True)
    for r in reps:
        r.open(dataclasses.replace(run, start_step=25))
    for s in snaps[3:5]:  # 25 (not a report step of the longer run), 30
        dispatch(reps, s)
    dispatch(reps, _final(snaps[5]))
    for r in reps:
        r.close()
    csv_steps, info, xyz_steps = steps_in_files()
    assert csv_steps == [0, 10, 20, 30, 40] and xyz_steps == [0, 10, 20, 30, 40]
    positions, _, info = read_dcd(paths[1])
    assert info["n_frames"] == 5 and info["last_step"] == 40
    np.testing.assert_allclose(positions, [s.positions for s in (snaps[:3] + snaps[4:])], atol=2e-6)


def _water_pdb(tmp_path, waterbox):
    path = tmp_path / "water.pdb"
    write_pdb(path, waterbox.topology, waterbox.positions, waterbox.box)
    return path


def test_frames_reporter_keeps_every_reported_position():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    frames = FramesReporter(5)
    result = diffmd.simulate(system, 10, report_every=5, reporters=[frames], precision="double", progress=False)
    assert len(frames.frames) == 3  # steps 0, 5, 10
    np.testing.assert_array_equal(frames.frames[0], np.asarray(system.positions, np.float64))
    np.testing.assert_array_equal(frames.frames[-1], np.asarray(result.positions))
    assert frames.frames[1] is not frames.frames[2] and not np.array_equal(frames.frames[1], frames.frames[2])
