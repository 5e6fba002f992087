"""``diffmd bench grad-memory``: dispatch, input checks and the JSON it prints."""

import json
import subprocess
import sys

import pytest

import diffmd
import diffmd.cli._bench as bench
from diffmd import InputError


def _module():
    return bench._import(bench.benchmarks_dir(), "grad_memory")


def test_hyphenated_name_dispatches_and_bad_steps_are_input_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["grad-memory", "--help"])
    assert exc.value.code == 0 and "--steps" in capsys.readouterr().out
    prmtop, coords = diffmd.data.alanine_dipeptide()
    with pytest.raises(InputError, match="--steps"):
        _module().main([prmtop, coords, "--steps", "0", "--in-process"])


@pytest.mark.slow
def test_prints_json_for_alanine_dipeptide():
    prmtop, coords = diffmd.data.alanine_dipeptide()
    out = subprocess.run([sys.executable, "-m", "diffmd.cli", "bench", "grad-memory", prmtop, coords, "--steps", "20",
                          "--segment", "5", "--forward", "--minimize-iterations", "0"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("steps", "seconds", "peak_memory_bytes", "gradient_norm", "segment_length", "device"):
        assert key in record, key
    assert record["steps"] == 20 and record["segment_length"] == 5 and record["gradient_finite"]
    assert record["gradient_norm"] > 0 and record["peak_memory_bytes"] > 0 and record["forward_seconds"] > 0
