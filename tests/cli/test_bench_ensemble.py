"""``diffmd bench ensemble``: the scaling benchmark runs end to end, and its cheap pieces."""

import json

import pytest


def _ensemble():
    import diffmd.cli._bench as bench

    return bench._import(bench.benchmarks_dir(), "ensemble")


@pytest.mark.slow
def test_bench_ensemble_quick(tmp_path):
    pytest.importorskip("openmm")
    from diffmd.cli._bench import main

    path = tmp_path / "ensemble.json"
    results = tmp_path / "RESULTS.md"
    assert main(["ensemble", "--quick", "--results", str(results), "--json", str(path), "--no-plot"]) == 0
    rec = json.loads(path.read_text())["systems"]["ala"]
    assert [s["replicas"] for s in rec["sizes"]] == [1, 2]
    for s in rec["sizes"]:
        assert s["ns_per_day"] > 0 and s["openmm"]["ns_per_day"] > 0
        assert s["ns_per_day"] == pytest.approx(s["replicas"] * s["ns_per_day_member"])
        assert 100 < s["temperature_k"] < 600  # a few steps from one 300 K draw: no blow-up
    text = results.read_text()
    assert "Ensemble scaling" in text and "one after another" in text and "| 2 |" in text


def test_sizes_and_chunks():
    from diffmd import InputError

    ens = _ensemble()
    assert ens._sizes("64,1,4,4", [], "--ala") == [1, 4, 64]
    assert ens._sizes("", [1], "--t4l") == []
    assert ens._sizes(None, [1, 2], "--ala") == [1, 2]
    with pytest.raises(InputError, match="--ala"):
        ens._sizes("1,x", [], "--ala")
    with pytest.raises(InputError, match=">= 1"):
        ens._sizes("0,2", [], "--t4l")
    assert ens.chunk_steps("ala", 1, "cpu") == 2000 and ens.chunk_steps("ala", 1024, "cpu") == 8
    assert ens.chunk_steps("t4l", 64, "gpu") == 200 and ens.chunk_steps("ala", 4, "gpu", 7) == 7
    with pytest.raises(InputError, match="--chunks"):
        ens.main(["--chunks", "0", "--no-record"])


def test_table_states_openmm_aggregate_and_memory_per_replica():
    ens = _ensemble()
    sizes = [{"replicas": r, "ns_per_day": 100.0 * r, "ns_per_day_member": 100.0, "stepping_ns_per_day": 110.0 * r,
              "report_s": 0.01, "steps_per_chunk": 10, "timed_chunks": 2, "first_chunk_s": 5.0, "prepare_s": 1.0,
              "temperature_k": 300.0, "rss_peak_delta_mib": 50.0 + 2.0 * r,
              "openmm": {"ns_per_day": 400.0, "threads": 1}} for r in (1, 4)]
    text = ens.system_table("ala", {"description": "alanine dipeptide", "sizes": sizes})
    assert "= one run's ns/day" in text
    assert "| 4 | 400 |" in text and "| 1.00 |" in text  # 400 ns/day aggregate = 1.00 x OpenMM's 400
    assert "| 58 | 14.50 | 2.00 |" in text  # peak delta, per replica, marginal per added replica
