"""``diffmd run --replicas R`` / ``--batch LIST.txt``: member folders, files, summary and errors."""

import argparse
import csv
import json
import os

import numpy as np
import pytest

import diffmd
from diffmd.cli._ensemble import add_ensemble_arguments, ensemble_settings, read_batch_list, run_ensemble_from_args
from diffmd.cli._run import add_run_parser
from diffmd.cli._settings import DEMO_OUT, DEMO_STEPS
from diffmd.kernels.errors import InputError, UnsupportedError


def parse(argv):
    parser = argparse.ArgumentParser(prog="diffmd")
    sub = parser.add_subparsers(dest="command", required=True)
    run = add_run_parser(sub)
    if "--replicas" not in run._option_string_actions:  # until diffmd run itself has the flags
        add_ensemble_arguments(run)
    return parser.parse_args(["run", *argv])


def write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def check_members(out, n_atoms, steps):
    """Member folders in order, each with state.csv from step 0, a DCD of its own atoms; the summary."""
    mdtraj = pytest.importorskip("mdtraj")
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json"] + [f"member-{m:03d}" for m in range(len(n_atoms))]
    last_frames = []
    for m, n in enumerate(n_atoms):
        folder = out / f"member-{m:03d}"
        with open(folder / "state.csv") as fh:
            table = list(csv.reader(fh))
        assert table[0][:6] == ["step", "time_ps", "potential_kjmol", "kinetic_kjmol", "total_kjmol", "temperature_k"]
        assert [r[0] for r in table[1:]] == [str(s) for s in steps]
        traj = mdtraj.load(str(folder / "trajectory.dcd"), top=str(folder / "topology.pdb"))
        assert traj.n_atoms == n and traj.n_frames >= len(steps) - 1
        last_frames.append(traj.xyz[-1])
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["members"] == len(n_atoms) and summary["ns_per_day_aggregate"] > 0
    assert [e["n_atoms"] for e in summary["member_list"]] == list(n_atoms)
    return summary, last_frames


def test_replicas_of_one_system(tmp_path, capsys):
    prmtop, crd = diffmd.data.alanine_dipeptide()
    out = tmp_path / "ens"
    # no constraints and 1 fs: the cheapest program that still runs the whole command
    args = parse([prmtop, crd, "--replicas", "2", "--steps", "10", "--report-every", "5", "--out", str(out),
                  "--constraints", "none", "--dt", "0.001", "--seed", "7", "--no-progress"])
    assert run_ensemble_from_args(args) == 0
    text = capsys.readouterr().out
    assert "2 members" in text and "ns/day" in text and str(out) in text
    summary, last = check_members(out, [22, 22], [0, 5, 10])
    assert [e["seed"] for e in summary["member_list"]] == [7, 8]
    assert abs(last[0] - last[1]).max() > 1e-4  # own velocities and noise: the replicas diverge


@pytest.mark.slow
def test_batch_with_replicas_writes_members_in_order(tmp_path, capsys):
    ala = diffmd.data.alanine_dipeptide()
    cb7 = diffmd.data.cb7_b2("complex-vacuum")
    listing = write_list(tmp_path / "systems.txt", ["# two vacuum systems", "", f"{ala[0]} {ala[1]}",
                                                    f"{cb7[0]} {cb7[1]}  # host-guest"])
    out = tmp_path / "ens"
    args = parse(["--batch", listing, "--replicas", "2", "--steps", "20", "--report-every", "10", "--out", str(out),
                  "--seed", "3", "--no-progress"])
    assert run_ensemble_from_args(args) == 0
    text = capsys.readouterr().out
    assert "4 members" in text and "ns/day" in text and str(out) in text
    # list order, the replicas of one system consecutive
    summary, _ = check_members(out, [22, 22, 156, 156], [0, 10, 20])
    listed = summary["member_list"]
    assert [e["system_index"] for e in listed] == [0, 0, 1, 1]
    assert [e["replica"] for e in listed] == [0, 1, 0, 1]
    assert [e["seed"] for e in listed] == [3, 4, 5, 6]


def test_replicas_with_pressure_write_each_members_volume_and_density(tmp_path, capsys):
    """--replicas 2 --pressure 1: one Monte Carlo barostat per replica; each member's state.csv has the
    volume and density columns of a single NPT run, following its own box."""
    prmtop, crd = diffmd.data.water_box()
    edge = 1.8774349  # the bundled file's box line is odd: write the cube its waters fill
    lines = open(crd).read().splitlines()
    lines[-1] = "".join(f"{v:12.7f}" for v in (10 * edge,) * 3 + (90.0,) * 3)
    cube = tmp_path / "watbox216_cube.crd"
    cube.write_text("\n".join(lines) + "\n")
    flags = [prmtop, str(cube), "--replicas", "2", "--pressure", "1", "--barostat-frequency", "2", "--steps", "20",
             "--report-every", "10", "--nonbonded", "cutoff", "--cutoff", "0.8", "--precision", "double",
             "--seed", "3", "--no-progress"]
    _, prep, _ = ensemble_settings(parse(flags))
    assert prep["pressure"] == 1.0 and prep["barostat_frequency"] == 2
    out = tmp_path / "ens"
    assert run_ensemble_from_args(parse(flags + ["--out", str(out)])) == 0
    assert "mean volume" in capsys.readouterr().out
    summary, _ = check_members(out, [648, 648], [0, 10, 20])
    mass = diffmd.load_amber(prmtop, str(cube)).masses.sum()
    finals = []
    for m, entry in enumerate(summary["member_list"]):
        with open(out / f"member-{m:03d}" / "state.csv") as fh:
            table = list(csv.reader(fh))
        assert table[0][6:8] == ["volume_nm3", "density_gcm3"]
        volume, density = (np.array([float(r[i]) for r in table[1:]]) for i in (6, 7))
        assert volume[0] == pytest.approx(edge**3, rel=1e-6) and len(np.unique(volume)) == 3
        np.testing.assert_allclose(density, mass / volume * 1e21 / 6.02214076e23, rtol=1e-5)
        assert entry["barostat_attempts"] == 10 and 0 < entry["barostat_accepted"] <= 10
        assert entry["mean_volume_nm3"] > 0
        finals.append(volume[-1])
    assert finals[0] != finals[1]  # own noise and moves: the replicas' boxes differ


def test_replicas_of_one_system_settings():
    prmtop, crd = diffmd.data.alanine_dipeptide()
    pairs, prep, run = ensemble_settings(parse([prmtop, crd, "--replicas", "3", "--steps", "40", "--temperature", "310",
                                                "--integrator", "verlet", "--precision", "double"]))
    assert pairs is None  # the positional system
    assert prep["replicas"] == 3 and prep["temperature"] == 310 and prep["integrator"] == "verlet"
    assert prep["precision"] == "double" and prep["nonbonded"] == "nocutoff" and prep["minimize"] is False
    assert run["steps"] == 40 and run["report_every"] == 500 and run["out"] == "diffmd-run"
    assert "steps" not in prep and "out" not in prep
    # no input: the demo's settings, as replicas
    pairs, prep, run = ensemble_settings(parse(["--replicas", "2"]))
    assert pairs is None and prep["minimize"] is True and prep["implicit_solvent"] == "obc2"
    assert run["out"] == DEMO_OUT and run["steps"] == DEMO_STEPS


def test_list_file_comments_quotes_and_relative_paths(tmp_path):
    prmtop, crd = diffmd.data.alanine_dipeptide()
    sub = tmp_path / "lists"
    sub.mkdir()
    spaced = tmp_path / "with space.inpcrd"
    spaced.write_bytes(open(crd, "rb").read())
    rel = os.path.relpath(prmtop, sub)
    listing = write_list(sub / "l.txt", ["   # comment only", f"{rel} '../with space.inpcrd'", "", f"{prmtop} {crd}"])
    pairs = read_batch_list(listing)
    assert pairs == [(os.path.normpath(prmtop), str(spaced)), (prmtop, crd)]


@pytest.mark.parametrize("lines, message", [
    (["{p}"], "line 1: expected 'PRMTOP COORDS'"),
    (["# nothing", "{p} {c}", "{p} {c} extra"], "line 3: expected 'PRMTOP COORDS'"),
    (["missing.prmtop {c}"], "line 1: PRMTOP file 'missing.prmtop' not found"),
    (["{p} 'unterminated"], "line 1: cannot split"),
    (["# only comments", ""], "lists no systems"),
])
def test_bad_list_file(tmp_path, lines, message):
    prmtop, crd = diffmd.data.alanine_dipeptide()
    listing = write_list(tmp_path / "bad.txt", [ln.format(p=prmtop, c=crd) for ln in lines])
    with pytest.raises(InputError, match=message) as info:
        run_ensemble_from_args(parse(["--batch", listing, "--steps", "5"]))
    assert "bad.txt" in str(info.value)


def test_bad_flags(tmp_path):
    prmtop, crd = diffmd.data.alanine_dipeptide()
    with pytest.raises(InputError, match="no such file"):
        run_ensemble_from_args(parse(["--batch", str(tmp_path / "absent.txt")]))
    listing = write_list(tmp_path / "l.txt", [f"{prmtop} {crd}"])
    with pytest.raises(InputError, match="not both"):
        run_ensemble_from_args(parse([prmtop, crd, "--batch", listing]))
    with pytest.raises(SystemExit):  # argparse refuses it (tests/test_cli_inputs.py checks the message)
        parse([prmtop, crd, "--replicas", "0"])
    args = parse([prmtop, crd])
    args.replicas = 0  # a namespace built in Python is checked too
    with pytest.raises(InputError, match="--replicas must be a positive"):
        run_ensemble_from_args(args)
    with pytest.raises(UnsupportedError, match="--xyz"):
        run_ensemble_from_args(parse([prmtop, crd, "--replicas", "2", "--xyz"]))
    with pytest.raises(UnsupportedError, match="--resume"):
        run_ensemble_from_args(parse(["--batch", listing, "--resume"]))
    # the single-run checks still apply
    with pytest.raises(InputError, match="--report-every"):
        run_ensemble_from_args(parse([prmtop, crd, "--replicas", "2", "--report-every", "0"]))


def test_a_system_without_box_in_a_pme_batch_is_refused_before_running(tmp_path):
    ala = diffmd.data.alanine_dipeptide()
    cb7 = diffmd.data.cb7_b2("complex-explicit")
    listing = write_list(tmp_path / "l.txt", [" ".join(cb7), " ".join(ala)])
    with pytest.raises(InputError, match="periodic box"):
        run_ensemble_from_args(parse(["--batch", listing, "--nonbonded", "pme", "--steps", "5",
                                      "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()
