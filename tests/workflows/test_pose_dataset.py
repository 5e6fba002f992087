"""Per-frame labels in ``diffmd.datasets`` (npz and extended XYZ round trips) and
``diffmd.workflows.pose_dataset`` turning a batch of protein-ligand runs into one labelled data set."""

import os

import numpy as np
import pytest

import diffmd
from diffmd import datasets
from diffmd import workflows as wf


def _small_set(labels):
    rng = np.random.default_rng(0)
    return datasets.Dataset(rng.normal(size=(3, 4, 3)), rng.normal(size=3), rng.normal(size=(3, 4, 3)),
                            np.array([6, 1, 1, 8]), labels=labels)


def test_labels_round_trip_npz_and_extxyz(tmp_path):
    data = _small_set({"ligand_rmsd_nm": [0.0, 0.1, 0.25], "bound": [1, 1, 0]})
    datasets.save_npz(data, tmp_path / "d.npz")
    back = datasets.load_npz(tmp_path / "d.npz")
    assert set(back.labels) == {"ligand_rmsd_nm", "bound"}
    np.testing.assert_array_equal(back.labels["ligand_rmsd_nm"], [0.0, 0.1, 0.25])
    datasets.write_extxyz(data, tmp_path / "d.xyz")
    xyz = datasets.read_extxyz(tmp_path / "d.xyz")
    np.testing.assert_allclose(xyz.labels["ligand_rmsd_nm"], [0.0, 0.1, 0.25])
    np.testing.assert_array_equal(xyz.labels["bound"], [1, 1, 0])
    sub = data.subset([0, 2])
    np.testing.assert_array_equal(sub.labels["bound"], [1, 0])
    both = data.concatenate(data)
    assert len(both.labels["bound"]) == 6
    with pytest.raises(diffmd.InputError, match="same labels"):
        data.concatenate(_small_set({}))
    with pytest.raises(diffmd.InputError, match="one number per frame"):
        _small_set({"bound": [1, 0]})


def test_pose_dataset_from_two_runs(tmp_path):
    from diffmd import simulate

    system = diffmd.load_amber(*diffmd.data.cb7_b2("complex-vacuum"))
    runs = []
    for seed in (1, 2):
        out = str(tmp_path / f"run{seed}")
        simulate(system, 20, report_every=10, precision="double", seed=seed, minimize=True, out=out, progress=False)
        runs.append(out)
    data = wf.pose_dataset(runs, system, "B2")
    assert len(data) == 6 and data.n_atoms == system.n_atoms
    np.testing.assert_array_equal(data.labels["member"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.labels["step"], [0, 10, 20, 0, 10, 20])
    assert np.all(data.labels["stayed_bound"] == 1) and np.all(data.labels["e_int_kj_mol"] < 0)
    # the labels are the force field's at the stored frames (DCD precision)
    params, energy_fn = system.energy_fn(precision="double")
    assert data.energies[4] == pytest.approx(float(energy_fn(params, data.positions[4])), rel=1e-12)
    for run in runs:
        assert os.path.isfile(os.path.join(run, "analysis.csv"))
    datasets.save_npz(data, tmp_path / "poses.npz")
    assert set(datasets.load_npz(tmp_path / "poses.npz").labels) == set(wf.LABEL_COLUMNS) | {"member"}
    with pytest.raises(diffmd.InputError, match="one system for all runs or one per run"):
        wf.pose_dataset(runs, [system], "B2")
