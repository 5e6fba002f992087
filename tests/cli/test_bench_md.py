"""``diffmd bench md``: the MD speed benchmark runs end to end (smoke test, slow)."""

import json

import pytest


@pytest.mark.slow
def test_bench_md_quick(tmp_path):
    pytest.importorskip("openmm")
    from diffmd.cli._bench import main

    path = tmp_path / "md.json"
    assert main(["md", "--quick", "--systems", "ala-water", "--engines", "diffmd-mixed,openmm-cpu", "--block", "10",
                 "--no-record", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())["systems"]["ala-water"]["engines"]
    for name in ("diffmd-mixed", "openmm-cpu"):
        assert rec[name]["ns_per_day"] > 0, rec[name]
        assert 200 < rec[name]["equilibration"]["mean_k"] < 400
    assert rec["diffmd-mixed"]["x_openmm"] > 0


# -- cheap checks of the DHFR settings (no dynamics, no DHFR files) --------------------------------------


def _md():
    import diffmd.cli._bench as bench

    return bench._import(bench.benchmarks_dir(), "md")


def test_dhfr_systems_have_their_own_step_and_block():
    md = _md()
    args = md.build_parser().parse_args(["--systems", "dhfr-pme,dhfr-pme-hmr"])
    assert md.system_dt("dhfr-pme") == 0.002 and md.system_dt("dhfr-pme-hmr") == 0.004
    assert md.SYSTEMS["dhfr-pme-hmr"]["hydrogen_mass"] == 1.5
    small = md.system_settings("dhfr-pme", args)
    assert small["block"] < md.system_settings("ala-water", args)["block"]
    assert md.system_settings("dhfr-pme", md.build_parser().parse_args(["--block", "7"]))["block"] == 7
    assert md.engine_spec("openmm-cpu", "dhfr-pme", 10)["platform"] == "CPU"
    assert md.engine_spec("openmm-cuda", "dhfr-pme", 10)["platform"] == "CUDA"
    assert md.engine_spec("diffmd-mixed", "dhfr-pme", 10)["precision"] == "mixed"


def test_bad_names_are_input_errors():
    from diffmd import InputError

    md = _md()
    with pytest.raises(InputError, match="unknown system"):
        md.main(["--systems", "dhfr", "--no-record"])
    with pytest.raises(InputError, match="unknown engine"):
        md.main(["--systems", "dhfr-pme", "--engines", "openmm-opencl", "--no-record"])
    with pytest.raises(InputError, match="--block"):
        md.main(["--systems", "dhfr-pme", "--block", "0", "--no-record"])
    import diffmd.cli._bench as bench

    profile = bench._import(bench.benchmarks_dir(), "profile_step")
    with pytest.raises(InputError, match="PME system"):
        profile.main(["--system", "ala-water", "--no-record"])


def test_openmm_gets_the_same_pme_and_hmr_settings_as_diffmd(monkeypatch):
    """A small stand-in for DHFR: the bundled water box of alanine dipeptide with PME and HMR."""
    openmm = pytest.importorskip("openmm")
    import numpy as np

    import diffmd
    from diffmd.kernels.constraint_setup import repartition_hydrogen_mass

    md = _md()
    monkeypatch.setitem(md.SYSTEMS, "ala-water-pme-hmr", dict(md.SYSTEMS["ala-water-pme"], dt=0.004,
                                                               hydrogen_mass=1.5))
    system, coords = md.openmm_system("ala-water-pme-hmr")
    force = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert force.getNonbondedMethod() == openmm.NonbondedForce.PME
    assert force.getCutoffDistance().value_in_unit(openmm.unit.nanometer) == pytest.approx(0.9)
    assert force.getEwaldErrorTolerance() == pytest.approx(md.EWALD_TOLERANCE)
    # the coordinate file's box, not the prmtop's, sizes OpenMM's PME grid
    nm = openmm.unit.nanometer
    box = np.array([v.value_in_unit(nm) for v in system.getDefaultPeriodicBoxVectors()])
    np.testing.assert_allclose(box, np.array([v.value_in_unit(nm) for v in coords.boxVectors]))
    mol = diffmd.load_amber(*md._files("ala-water-pme-hmr"))
    ours = repartition_hydrogen_mass(mol.masses, np.asarray(mol.terms.bond_idx), mol.topology.elements, 1.5)
    theirs = np.array([system.getParticleMass(i).value_in_unit(openmm.unit.amu)
                       for i in range(system.getNumParticles())])
    assert np.sum(np.isclose(theirs, 1.5)) > 0
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def _record(backend):
    engine = {"ns_per_day": 850.0, "x_openmm": 40.0, "equilibration": {"mean_k": 301.0},
              "memory": {"peak_mib": 900.0, "device_peak_mib": 2100.0},
              "rebuilds": {"calls": 4, "blocks": 4, "calls_with_rebuild": 3}}
    return {"environment": {"jax_backend": backend, "devices": [f"{backend}:NVIDIA H100 80GB HBM3"]},
            "systems": {"dhfr-pme-hmr": {"description": "DHFR 4 fs", "dt_ps": 0.004,
                                         "settings": {"block": 10, "equilibrate": 1, "repeats": 3},
                                         "engines": {"diffmd-mixed": engine,
                                                     "openmm-cuda": {"status": "n/a", "reason": "no CUDA"}}}}}


def test_table_and_published_ratio():
    md = _md()
    text = md.system_table("dhfr-pme-hmr", _record("gpu")["systems"]["dhfr-pme-hmr"])
    assert "device peak MiB" in text and "| 2100 |" in text and "3 of 4" in text and "n/a: no CUDA" in text
    assert "40 fs" in text  # 10 steps of 4 fs
    record = _record("gpu")
    line = md.published_ratio_line(record)
    assert "NVIDIA H100" in line and f"{850.0 / md.OPENMM_PUBLISHED_H100:.3f}" in line
    assert record["published_ratio"]["ratio"] == pytest.approx(850.0 / md.OPENMM_PUBLISHED_H100)
    assert md.published_ratio_line(_record("cpu")) is None
