"""Killed runs lose nothing: ``diffmd run ... --out DIR`` killed with SIGKILL at random moments
and re-run as the same command with ``--resume`` (a preemptible cluster's requeue) finishes with
the files and the state of a run that was never interrupted, bit for bit."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import diffmd
from diffmd.io import restore_checkpoint
from diffmd.io._dcd import read_dcd

STEPS, EVERY = 395, 10  # the final step falls between two reports


def _rows(path):
    try:
        with open(path) as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def _state_columns(path):
    """state.csv without its last column (the wall-clock speed)."""
    with open(path) as fh:
        return [line.rsplit(",", 1)[0] for line in fh.read().splitlines()]


@pytest.mark.slow  # six processes that each load JAX (restarts reuse a compilation cache): ~60 s on 2 cores
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    prmtop, coords = diffmd.data.alanine_dipeptide()
    command = [sys.executable, "-m", "diffmd.cli", "run", prmtop, coords, "--steps", str(STEPS), "--report-every",
               str(EVERY), "--seed", "3", "--no-progress"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run([*command, "--out", str(whole)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    rng = random.Random(12)
    csv = killed / "state.csv"
    mid_run = 0
    # kill 1: at a random moment of the start-up (before or after the first checkpoint); kills 2-4: right
    # after a new row of state.csv appears (so often while that report's checkpoint is being written), or
    # a random few milliseconds later
    for attempt in range(4):
        resume = ["--resume"] if attempt else []
        process = subprocess.Popen([*command, "--out", str(killed), *resume], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if attempt == 0:
            deadline = time.monotonic() + rng.uniform(2.0, 6.0)
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.01)
        else:
            target = _rows(csv) + rng.randint(1, 6)
            while _rows(csv) < target and process.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.03)]))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            mid_run += 0 < _rows(csv) - 1 < STEPS // EVERY + 2
        process.wait(timeout=60)
    assert mid_run >= 2  # most kills landed in the middle of the run

    finished = subprocess.run([*command, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    again = subprocess.run([*command, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "already finished" in again.stdout

    a, b = _state_columns(whole / "state.csv"), _state_columns(csv)
    assert a == b and len(a) == 1 + STEPS // EVERY + 2  # header, 0..390 every 10, the final 395
    (xa, _, info_a), (xb, _, info_b) = read_dcd(whole / "trajectory.dcd"), read_dcd(killed / "trajectory.dcd")
    assert info_a == info_b and info_a["last_step"] == STEPS
    np.testing.assert_array_equal(xa, xb)
    state_a, meta_a = restore_checkpoint(whole)
    state_b, meta_b = restore_checkpoint(killed)
    assert meta_a == meta_b and meta_a["step"] == STEPS
    for name in state_a:
        np.testing.assert_array_equal(np.asarray(state_a[name]), np.asarray(state_b[name]), err_msg=name)
    assert sorted(p.name for p in killed.iterdir() if p.is_dir()) == ["checkpoint"]
