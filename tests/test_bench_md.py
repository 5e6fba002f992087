"""``diffmd bench md``: the MD speed benchmark runs end to end (smoke test, slow)."""

import json

import pytest


@pytest.mark.slow
def test_bench_md_quick(tmp_path):
    pytest.importorskip("openmm")
    from diffmd.bench import main

    path = tmp_path / "md.json"
    assert main(["md", "--quick", "--systems", "ala-water", "--engines", "diffmd-mixed,openmm-cpu", "--block", "10",
                 "--no-record", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())["systems"]["ala-water"]["engines"]
    for name in ("diffmd-mixed", "openmm-cpu"):
        assert rec[name]["ns_per_day"] > 0, rec[name]
        assert 200 < rec[name]["equilibration"]["mean_k"] < 400
    assert rec["diffmd-mixed"]["x_openmm"] > 0
