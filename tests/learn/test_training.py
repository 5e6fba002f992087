"""Energy and force matching: the trainer, checkpoints and resume, configs, ``diffmd train``."""

import json
import os

import jax
import numpy as np
import pytest

from diffmd import datasets, train
from diffmd.cli import main as cli_main
from diffmd.kernels.errors import InputError

# a tiny model: the tests check the machinery, not accuracy
MODEL = dict(kind="schnet", cutoff=0.5, features=8, interactions=1, n_rbf=6)


def _water_frames(n_frames=48, seed=0):
    """Water-like frames labelled by harmonic O-H bonds and H-O-H angle (analytic forces, numpy)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    x = base[None] + rng.normal(scale=0.006, size=(n_frames, 3, 3))
    kb, r0, ka, t0 = 4.6e5, 0.0957, 836.0, np.radians(104.5)
    energies, forces = np.zeros(n_frames), np.zeros_like(x)
    for h in (1, 2):
        d = x[:, h] - x[:, 0]
        r = np.linalg.norm(d, axis=1)
        energies += 0.5 * kb * (r - r0) ** 2
        f = -(kb * (r - r0) / r)[:, None] * d
        forces[:, h] += f
        forces[:, 0] -= f
    a, b = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]
    ra, rb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    c = np.sum(a * b, axis=1) / (ra * rb)
    t = np.arccos(c)
    energies += 0.5 * ka * (t - t0) ** 2
    dE_dc = -ka * (t - t0) / np.sqrt(1 - c ** 2)
    dc_da = b / (ra * rb)[:, None] - (c / ra ** 2)[:, None] * a
    dc_db = a / (ra * rb)[:, None] - (c / rb ** 2)[:, None] * b
    forces[:, 1] -= dE_dc[:, None] * dc_da
    forces[:, 2] -= dE_dc[:, None] * dc_db
    forces[:, 0] += dE_dc[:, None] * (dc_da + dc_db)
    return datasets.Dataset(x, energies - 100.0, forces, np.array([8, 1, 1]))


@pytest.fixture(scope="module")
def water():
    data = _water_frames()
    return datasets.split(data, 0.25, seed=0)


def test_analytic_labels_are_minus_gradient():
    data = _water_frames(2)
    k, eps = 0, 1e-6
    for atom, axis in ((0, 1), (2, 0)):
        x = data.positions[k].copy()
        x[atom, axis] += eps
        up = _water_energy(x)
        x[atom, axis] -= 2 * eps
        down = _water_energy(x)
        assert abs(-(up - down) / (2 * eps) - data.forces[k, atom, axis]) < 1e-3 * max(1.0, abs(data.forces[k, atom, axis]))


def _water_energy(x):
    kb, r0, ka, t0 = 4.6e5, 0.0957, 836.0, np.radians(104.5)
    e = sum(0.5 * kb * (np.linalg.norm(x[h] - x[0]) - r0) ** 2 for h in (1, 2))
    a, b = x[1] - x[0], x[2] - x[0]
    t = np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return e + 0.5 * ka * (t - t0) ** 2 - 100.0


def test_energy_shift_fit_matches_the_mean(water):
    train_set, _ = water
    params, fn, spec = train.build_model(MODEL, train_set)
    species = np.array([1, 0, 0])
    shift = np.array(spec["energy_shift"])
    assert abs(shift[species].sum() - train_set.energies.mean()) < 1e-8
    assert spec["species_table"] == [1, 8]


def test_trainer_reduces_validation_force_rmse(water):
    train_set, val_set = water
    params, fn, _ = train.build_model(MODEL, train_set)
    before = train.evaluate(params, fn, val_set)
    cfg = train.TrainConfig(steps=60, batch_size=12, learning_rate=1e-2, schedule="constant", validate_every=30)
    result = train.train(params, fn, train_set, val_set, cfg, progress=False)
    after = result.history[-1]
    assert [r["step"] for r in result.history] == [30, 60]
    assert after["val_force_rmse_kjmolnm"] < 0.8 * before["force_rmse_kjmolnm"]
    m = train.evaluate(result.params, fn, val_set)
    assert abs(m["force_rmse_kjmolnm"] - after["val_force_rmse_kjmolnm"]) < 1e-6 * m["force_rmse_kjmolnm"]
    # the metric is the RMSE over force components
    e, f = jax.vmap(lambda x: _value_and_forces(fn, result.params, x))(val_set.positions)
    np.testing.assert_allclose(m["force_rmse_kjmolnm"], np.sqrt(np.mean((np.asarray(f) - val_set.forces) ** 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(m["energy_mae_kjmol"], np.mean(np.abs(np.asarray(e) - val_set.energies)), rtol=1e-5)


def _value_and_forces(fn, params, x):
    from diffmd.kernels.neighbors import dense_neighbors, exclusion_table

    nb = dense_neighbors(3, exclusion_table(3, np.zeros((0, 2), np.int64)))
    e, g = jax.value_and_grad(fn, argnums=1)(params, x, None, nb)
    return e, -g


@pytest.mark.slow  # ~50 s of compilation; the MD checkpoint resume is in the default suite
def test_checkpoint_resume_equals_straight_training(water, tmp_path):
    train_set, val_set = water
    params, fn, _ = train.build_model(MODEL, train_set)
    # exponential decay does not depend on the total steps, so a 3-step run is the first half of a 6-step one
    common = dict(batch_size=8, learning_rate=5e-3, schedule="exponential", warmup_steps=2, decay_steps=2,
                  validate_every=3, checkpoint_every=3)
    straight = train.train(params, fn, train_set, val_set, train.TrainConfig(steps=6, **common),
                           out=tmp_path / "a", progress=False)
    train.train(params, fn, train_set, val_set, train.TrainConfig(steps=3, **common), out=tmp_path / "b",
                progress=False)
    resumed = train.train(params, fn, train_set, val_set, train.TrainConfig(steps=6, **common), out=tmp_path / "b",
                          resume=True, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history == straight.history
    rows = open(tmp_path / "b" / "metrics.csv").read().splitlines()
    assert rows[0] == ",".join(train.METRIC_COLUMNS) and len(rows) == 3
    with pytest.raises(InputError, match="needs out="):
        train.train(params, fn, train_set, None, train.TrainConfig(steps=1), resume=True)


def _write_config(path, text):
    path.write_text(text)
    return path


def test_config_validation_errors(tmp_path):
    with pytest.raises(InputError, match=r"unknown key 'learning_rat' in \[train\]; valid keys: .*learning_rate"):
        train.load_config(_write_config(tmp_path / "a.toml", '[data]\npath = "x.npz"\n[train]\nlearning_rat = 1e-3\n'))
    with pytest.raises(InputError, match=r"unknown key 'modle'.*valid keys: data, model, output, train"):
        train.load_config(_write_config(tmp_path / "b.toml", '[data]\npath = "x.npz"\n[modle]\nkind = "schnet"\n'))
    with pytest.raises(InputError, match="exactly one of path"):
        train.load_config(_write_config(tmp_path / "c.toml", "[model]\nkind = 'schnet'\n"))
    with pytest.raises(InputError, match="kind must be one of schnet, painn"):
        train.load_config(_write_config(tmp_path / "d.toml", '[data]\npath = "x.npz"\n[model]\nkind = "mace"\n'))
    with pytest.raises(InputError, match=r"unknown key 'frame' in \[data.generate\]"):
        train.load_config(_write_config(tmp_path / "e.toml", '[data.generate]\nsystem = "alanine-dipeptide"\n'
                                                              'frame = 3\n'))
    with pytest.raises(InputError, match="schedule must be"):
        train.load_config(_write_config(tmp_path / "f.toml", '[data]\npath = "x.npz"\n[train]\nschedule = "step"\n'))
    with pytest.raises(InputError, match="not valid TOML"):
        train.load_config(_write_config(tmp_path / "g.toml", "[data\n"))
    cfg = train.load_config(_write_config(tmp_path / "h.toml", '[data]\npath = "x.npz"\n[train]\nsteps = 5\n'))
    assert cfg["train"].steps == 5 and cfg["data"]["path"] == os.path.join(str(tmp_path), "x.npz")


def test_example_config_is_valid():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = train.load_config(os.path.join(root, "examples", "train_schnet_alanine.toml"))
    assert cfg["data"]["generate"]["system"] == "alanine-dipeptide"


def test_cli_train_on_a_tiny_config(tmp_path, capsys):
    datasets.save_npz(_water_frames(24, seed=4), tmp_path / "water.npz")
    config = _write_config(tmp_path / "tiny.toml", """
[data]
path = "water.npz"
[model]
kind = "schnet"
features = 8
interactions = 1
n_rbf = 6
[train]
steps = 4
batch_size = 6
validate_every = 2
checkpoint_every = 2
validation_fraction = 0.25
[output]
folder = "out"
""")
    assert cli_main(["train", str(config), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert summary["validation_frames"] == 6 and summary["output"] == str(out)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,val_energy_mae_kjmol,val_force_rmse_kjmolnm" and len(rows) == 3
    assert (out / "checkpoint" / "metadata.json").is_file()
    params, fn = train.load_model(out, [8, 1, 1])
    x = _water_frames(1, seed=9).positions[0]
    e = fn(params, x, None, fn.neighbor_list(x))
    assert np.isfinite(float(e))
    # a bad config is an error message and exit status 2, not a traceback
    bad = _write_config(tmp_path / "bad.toml", '[data]\npath = "water.npz"\n[train]\nstep = 4\n')
    assert cli_main(["train", str(bad)]) == 2
    assert "unknown key 'step'" in capsys.readouterr().err


@pytest.mark.slow
def test_example_quick(tmp_path, load_example):
    ex1 = load_example("train_neural_alanine")
    summary = ex1.main(["--quick", "--out", str(tmp_path / "ex1"), "--no-progress"])
    assert summary["val_force_rmse_kjmolnm"] < summary["val_force_rmse_before_kjmolnm"]
    # the Amber reference runs are complete; the divergences are proper ones
    every = ex1.SIZES["quick"]["md_every"]
    assert summary["amber_md_frames"] == summary["md_runs"] * summary["md_steps_per_run"] // every
    assert 0.0 <= summary["amber_vs_amber_js_divergence_bits"] <= 1.0
    # at CI size the learned potential is crude and its MD may stop early (reported, not raised)
    if summary["learned_md_frames"]:
        assert 0.0 <= summary["phi_psi_js_divergence_bits"] <= 1.0
    # one refinement round: frames the learned MD visited (the sane ones) joined the training set
    first, second = summary["rounds"]
    assert 0 <= second["frames_added"] <= first["learned_md_frames"]
    assert second["train_frames"] == first["train_frames"] + second["frames_added"]
    saved = np.load(tmp_path / "ex1" / "phi_psi.npz")
    assert saved["amber"].shape == (summary["amber_md_frames"], 2)
    assert saved["learned"].shape == (summary["learned_md_frames"], 2)
    assert np.all(np.abs(saved["learned"]) <= 180.0)
