"""``examples/mlmm_ligand.py --quick``: train a guest potential with diffmd's own generator and trainer,
then run the CB7-B2 complex in ML/MM; check what it reports."""

import json
import os

import numpy as np
import pytest


@pytest.mark.slow  # data generation, training and ML/MM dynamics: a few minutes on two cores
def test_mlmm_example_quick(tmp_path, load_example):
    example = load_example("mlmm_ligand")
    summary = example.main(["--quick", "--out", str(tmp_path / "out"), "--no-progress"])
    size = example.SIZES["quick"]
    assert summary["ml_atoms"] == 30 and summary["complex_atoms"] == 156
    assert summary["frames"] == size["frames"]
    # training helped
    assert summary["val_force_rmse_kjmolnm"] < summary["val_force_rmse_before_kjmolnm"]
    # the ML/MM run is complete, its energies and temperatures finite
    assert summary["md_error"] is None
    assert summary["md_frames"] == size["md_steps"] // size["md_every"] + 1
    assert np.isfinite(summary["md_potential_kjmol"]).all() and np.isfinite(summary["md_temperature_k"]).all()
    assert 50.0 < summary["md_temperature_k"][-1] < 1000.0
    # the model's guest energy tracks the Amber internal energy it replaces (the labels it was trained on):
    # on the frames the run visits, its mean error is of the order of its validation error
    assert abs(summary["ml_minus_mm_internal_mean_kjmol"]) < 5.0 * summary["val_energy_mae_kjmol"] + 10.0
    # lambda: 0 is Amber's energy, 1 ML/MM's, linear in between
    parts = summary["last_frame_parts_kjmol"]
    by_lambda = np.asarray(summary["energy_by_lambda_last_frame_kjmol"])
    np.testing.assert_allclose(by_lambda[0], parts["mm"], rtol=1e-10)
    np.testing.assert_allclose(by_lambda[-1], parts["mm"] + parts["ml"] - parts["mm_internal"], rtol=1e-10)
    np.testing.assert_allclose(by_lambda, by_lambda[0] + np.asarray(summary["lambdas"]) * (by_lambda[-1] - by_lambda[0]),
                               rtol=1e-10)
    # the saved model records the molecule it was trained on (what --ml-atoms checks)
    with open(os.path.join(summary["model_dir"], "model.json")) as fh:
        assert len(json.load(fh)["elements"]) == 30
    with open(tmp_path / "out" / "example-summary.json") as fh:
        assert json.load(fh)["md_frames"] == summary["md_frames"]
