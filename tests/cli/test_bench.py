"""Smoke tests of the benchmark harness (``diffmd bench``): output structure, not timings."""

import json
import math
import os

import numpy as np
import pytest

import diffmd.cli._bench as bench
from diffmd import InputError

pytest.importorskip("openmm")


def _module(name):
    return bench._import(bench.benchmarks_dir(), name)


def test_help_lists_energy(capsys):
    assert bench.main(["--help"]) == 0
    assert "energy" in capsys.readouterr().out


def test_unknown_benchmark_is_an_input_error():
    with pytest.raises(InputError, match="unknown benchmark"):
        bench.main(["no-such-benchmark"])


def test_missing_repository_names_the_fix(monkeypatch):
    monkeypatch.delenv("DIFFMD_BENCHMARKS", raising=False)
    monkeypatch.setattr(bench, "__file__", "/nonexistent/site-packages/diffmd/cli/_bench.py")
    with pytest.raises(InputError, match="source repository"):
        bench.benchmarks_dir()


class _FakeWorker:
    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def run(self, n):
        self.calls.append(n)
        return self.seconds * n


def test_interleaved_and_paired_ratio():
    h = _module("_harness")
    fast, slow = _FakeWorker(0.001), _FakeWorker(0.004)
    timing = h.interleaved({"fast": fast, "slow": slow}, rounds=3, round_seconds=0.02)
    assert timing["fast"]["units_per_round"] == 20 and timing["slow"]["units_per_round"] == 5
    assert fast.calls == [1, 20, 20, 20] and slow.calls == [1, 5, 5, 5]
    assert np.allclose(timing["slow"]["seconds"], 0.004)
    assert math.isclose(h.paired_ratio(timing["slow"]["seconds"], timing["fast"]["seconds"]), 4.0)


def test_accuracy_flags_wrong_numbers():
    energy = _module("energy")
    rng = np.random.default_rng(0)
    ref_forces = rng.normal(size=(10, 3)) * 100.0
    ref = {"energy": -1000.0}
    good = energy._accuracy({"energy": -1000.001}, ref_forces * (1 + 1e-5), ref, ref_forces, "single")
    assert good["ok"] and good["energy_error"] == pytest.approx(-0.001)
    off_energy = energy._accuracy({"energy": -990.0}, ref_forces, ref, ref_forces, "single")
    off_forces = energy._accuracy({"energy": -1000.0}, ref_forces * 1.01, ref, ref_forces, "single")
    too_loose_for_double = energy._accuracy({"energy": -1000.0}, ref_forces * (1 + 1e-4), ref, ref_forces, "double")
    assert not off_energy["ok"] and not off_forces["ok"] and not too_loose_for_double["ok"]


def test_dhfr_found_without_download(tmp_path, monkeypatch):
    systems = _module("_systems")
    for name in systems.DHFR_FILES:
        (tmp_path / name).write_text("")
    monkeypatch.setenv("DIFFMD_DHFR_DIR", str(tmp_path))
    assert systems.dhfr_files(tmp_path / "cache", download=False) == tuple(
        str(tmp_path / f) for f in systems.DHFR_FILES)


def test_energy_quick_run_structure(tmp_path, capsys):
    results, out = tmp_path / "RESULTS.md", tmp_path / "energy.json"
    engines = ["diffmd-single", "openmm-cpu", "openmm-cuda"]
    rc = bench.main(["energy", "--quick", "--systems", "ala", "--engines", ",".join(engines), "--repeats", "2",
                     "--results", str(results), "--json", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["environment"]["versions"]["openmm"] != "not installed"
    ala = record["systems"]["ala"]
    assert ala["n_atoms"] == 22 and set(ala["engines"]) == set(engines)
    for name in ("diffmd-single", "openmm-cpu"):
        rec = ala["engines"][name]
        assert rec["status"] == "ok", rec
        assert len(rec["timing"]["seconds"]) == 2 and min(rec["timing"]["seconds"]) > 0
        assert rec["memory"]["peak_mib"] > 0
        assert rec["accuracy"]["force_rel_error"] < rec["accuracy"]["tolerance"]["force"]
        assert rec["x_openmm"] > 0
    assert ala["engines"]["diffmd-single"]["setup"]["compile_s"] > 0
    cuda = ala["engines"]["openmm-cuda"]
    assert cuda["status"] in ("ok", "n/a") and (cuda["status"] == "ok" or cuda["reason"])
    assert ala["baseline"] in ("openmm-cpu", "openmm-cuda")
    printed = capsys.readouterr().out
    text = results.read_text()
    assert text.startswith("# diffmd benchmark results")
    for needle in ("| diffmd-single |", "x OpenMM", "JAX devices", "load average"):
        assert needle in text and needle in printed


def test_record_warns_when_sources_change_during_a_run():
    h = _module("_harness")
    env = {"cpu": "cpu", "cores": 2, "usable_cores": 2, "memory_gib": 1.0, "load_average": [1.0, 1.0, 1.0],
           "devices": ["cpu:cpu"], "commit": "abc", "source": "111",
           "versions": dict.fromkeys(["diffmd", "jax", "jaxlib", "openmm", "jax-md", "numpy", "python"], "1")}
    assert not any("WARNING" in line for line in h.environment_lines(dict(env, source_end="111")))
    assert "WARNING" in h.environment_lines(dict(env, source_end="222"))[0]
    assert len(h.source_fingerprint()) == 12


def test_worker_failure_is_reported_with_its_log():
    h = _module("_harness")
    worker = h.Worker("no_such_benchmark_module", {"name": "broken"}, timeout=60)
    try:
        with pytest.raises(h.WorkerError, match="ModuleNotFoundError"):
            worker.wait_ready()
    finally:
        worker.close(kill=True)
        os.unlink(worker._log.name)  # a killed worker keeps its log for inspection
