"""``diffmd run``: flags, outputs, errors and the bundled demo."""

import argparse
import csv

import pytest

import diffmd
from diffmd.cli._run import add_run_parser, run_command
from diffmd.cli._settings import DEMO_OUT, run_settings


def parse(argv):
    parser = argparse.ArgumentParser(prog="diffmd")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    return parser.parse_args(["run", *argv])


def rows(path):
    with open(path) as fh:
        return list(csv.reader(fh))


def test_run_writes_outputs_and_summary(tmp_path, capsys):
    """The final step is reported although --steps is not a multiple of --report-every; the same
    command with --resume and a larger --steps (the run's total) continues to it; once finished,
    --resume says so and exits 0 without touching a file."""
    from diffmd.io._dcd import read_dcd

    prmtop, crd = diffmd.data.alanine_dipeptide()
    out = tmp_path / "run"
    flags = [prmtop, crd, "--report-every", "20", "--out", str(out), "--seed", "2", "--temperature", "310",
             "--precision", "double", "--xyz", "--no-progress"]
    assert run_command(parse([*flags, "--steps", "50"])) == 0
    text = capsys.readouterr().out
    assert "ns/day" in text and str(out) in text
    assert "final state: step 50" in text and "mean temperature" in text and "over steps 20-50" in text
    table = rows(out / "state.csv")
    assert table[0][:6] == ["step", "time_ps", "potential_kjmol", "kinetic_kjmol", "total_kjmol", "temperature_k"]
    assert [r[0] for r in table[1:]] == ["0", "20", "40", "50"]
    assert read_dcd(out / "trajectory.dcd")[2]["last_step"] == 50
    assert (out / "trajectory.xyz").read_text().count("step=50") == 1
    for name in ("trajectory.dcd", "topology.pdb", "trajectory.xyz", "checkpoint/metadata.json"):
        assert (out / name).is_file(), name
    # resume to a total of 60: the first run's extra row at 50 goes, the rows continue on the grid
    assert run_command(parse([*flags, "--steps", "60", "--resume"])) == 0
    assert "final state: step 60" in capsys.readouterr().out
    assert [r[0] for r in rows(out / "state.csv")[1:]] == ["0", "20", "40", "60"]
    positions, _, info = read_dcd(out / "trajectory.dcd")
    assert positions.shape[0] == 4 and info["last_step"] == 60
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert run_command(parse([*flags, "--steps", "60", "--resume"])) == 0
    assert "already finished" in capsys.readouterr().out
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_settings_from_flags():
    prmtop, crd = diffmd.data.alanine_dipeptide()
    kw = run_settings(parse([prmtop, crd, "--integrator", "verlet", "--dt", "0.001", "--constraints", "none",
                          "--hmr", "1.5", "--nonbonded", "cutoff", "--cutoff", "1.2", "--minimize"]))
    assert kw["integrator"] == "verlet" and kw["dt"] == 0.001 and kw["constraints"] == "none"
    assert kw["hydrogen_mass"] == 1.5 and kw["nonbonded"] == "cutoff" and kw["cutoff"] == 1.2 and kw["minimize"]
    assert run_settings(parse([prmtop, crd]))["minimize"] is False
    demo = run_settings(parse([]))
    assert demo["implicit_solvent"] == "obc2" and demo["minimize"] and demo["out"] == DEMO_OUT
    assert demo["constraints"] == "hbonds" and demo["precision"] == "single" and demo["nonbonded"] == "cutoff"
    assert run_settings(parse(["--precision", "double"]))["precision"] == "double"
    # the demo's 4 fs with hydrogen mass repartitioning, unless the time step or HMR is chosen
    assert demo["dt"] == 0.004 and demo["hydrogen_mass"] == 1.5 and demo["minimize_max_iterations"] > 0
    assert demo["steps"] * demo["dt"] >= 2.0  # a few picoseconds
    mine = run_settings(parse(["--dt", "0.001"]))
    assert mine["dt"] == 0.001 and mine["hydrogen_mass"] is None
    assert run_settings(parse(["--hmr", "2.0"]))["dt"] == 0.002
    # flags equal to the non-demo defaults still count as chosen
    assert run_settings(parse(["--dt", "0.002"]))["dt"] == 0.002
    assert run_settings(parse(["--precision", "mixed"]))["precision"] == "mixed"
    assert run_settings(parse([prmtop, crd]))["dt"] == 0.002 and run_settings(parse([prmtop, crd]))["precision"] == "mixed"


@pytest.mark.parametrize("argv, message", [
    (["x.prmtop"], "missing the coordinates"),
    (["--implicit-solvent", "obc2", "--nonbonded", "pme"], "cannot be combined"),
    (["--nonbonded", "nocutoff", "--cutoff", "1.0"], "no effect"),
    (["--steps", "-5"], "--steps"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    from diffmd.cli import build_parser, main

    # through the real entry point when the lead has hooked `run` in; else through ours
    if "run" in build_parser()._subparsers._group_actions[0].choices and \
            build_parser().parse_args(["run"]).func is run_command:
        assert main(["run", *argv]) == 2
        assert message in capsys.readouterr().err
    else:
        with pytest.raises(diffmd.InputError, match=message):
            run_command(parse(argv))


def test_missing_file_exits_nonzero(tmp_path):
    with pytest.raises(diffmd.InputError):
        run_command(parse([str(tmp_path / "none.prmtop"), str(tmp_path / "none.crd"), "--steps", "1"]))


@pytest.mark.slow
def test_demo_runs_with_tiny_steps(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_command(parse(["--steps", "4", "--report-every", "2", "--out", str(out), "--no-progress"])) == 0
    text = capsys.readouterr()
    assert "T4 lysozyme" in text.err and str(out) in text.out
    table = rows(out / "state.csv")
    assert [r[0] for r in table[1:]] == ["0", "2", "4"]
    temps = [float(r[5]) for r in table[1:]]
    assert all(100 < t < 500 for t in temps)


def _result(steps, temperature, timed_steps, timed_seconds):
    import numpy as np

    from diffmd.md import SimulationResult

    steps = np.asarray(steps)
    zeros = np.zeros(len(steps))
    return SimulationResult(carry=None, positions=None, velocities=None, steps=steps, time_ps=steps * 0.002,
                            potential_energy=zeros - 50.0, kinetic_energy=zeros, total_energy=zeros,
                            temperature=np.asarray(temperature, float), ns_per_day=12.5, wall_seconds=1.0, n_dof=51,
                            timed_steps=timed_steps, timed_seconds=timed_seconds)


def test_summary_speed_only_when_measured_and_mean_temperature_after_equilibration(tmp_path, monkeypatch, capsys):
    """The summary's ns/day needs a long enough timed part; its mean temperature leaves out the first
    10% of the run (a run from a minimized structure starts cold) and names its window. The flags
    reach simulate: --max-temperature-factor (0: off), --resume without a checkpoint (a fresh start)."""
    import importlib

    calls = []
    cold_start = _result([0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
                         [80, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300], 900, 0.4)

    def fake_simulate(system, steps, **kw):
        calls.append((steps, kw))
        return cold_start

    monkeypatch.setattr(importlib.import_module("diffmd.cli._run"), "simulate", fake_simulate)
    prmtop, crd = diffmd.data.alanine_dipeptide()
    base = [prmtop, crd, "--steps", "1000", "--out", str(tmp_path / "r"), "--no-progress"]
    assert run_command(parse(base)) == 0
    text = capsys.readouterr().out
    assert "speed: not measured" in text and "12.5" not in text
    assert "final state: step 1000" in text
    assert "mean temperature 300.0 K over steps 100-1000, 10 samples (the first 10% of the run left out" in text
    assert calls[-1][1]["max_temperature_factor"] == 5.0
    cold_start = _result(cold_start.steps, cold_start.temperature, 900, 30.0)
    assert run_command(parse([*base, "--max-temperature-factor", "0", "--resume"])) == 0
    captured = capsys.readouterr()
    assert "speed: 12.5 ns/day (after compilation: 900 steps in 30.0 s)" in captured.out
    assert "no checkpoint" in captured.err and "starts the run from step 0" in captured.err
    assert calls[-1][1]["max_temperature_factor"] is None and calls[-1][1]["resume"] is True
    assert run_command(parse([*base, "--max-temperature-factor", "8"])) == 0
    assert calls[-1][1]["max_temperature_factor"] == 8.0
