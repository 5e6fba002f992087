"""``diffmd bench training``: argument handling (cheap) and the engines on a tiny model (slow)."""

import json

import numpy as np
import pytest


def _training():
    import diffmd.cli._bench as bench

    return bench._import(bench.benchmarks_dir(), "training")


def test_defaults_full_and_quick():
    tr = _training()
    full = tr.resolve_args([])
    assert (full.frames, full.batch, full.features, full.interactions, full.block) == (64, 16, 64, 3, 100)
    assert full.engines == list(tr.ENGINES)
    quick = tr.resolve_args(["--quick", "--engines", "diffmd-schnet,jaxmd-gnn", "--batch", "2"])
    assert quick.batch == 2 and quick.features < full.features and quick.repeats == 1
    assert quick.engines == ["diffmd-schnet", "jaxmd-gnn"]
    spec = tr.engine_spec("jaxmd-gnn", quick, "frames.npz")
    assert spec["features"] == quick.features and spec["cutoff"] == 0.5 and spec["data"] == "frames.npz"
    # every diffmd engine has a jax-md peer that is itself an engine
    assert {e for pair in tr.PAIRS for e in pair} == set(tr.ENGINES)


@pytest.mark.parametrize("argv, match", [
    (["--engines", "diffmd-schnet,torchmd"], "unknown engine"),
    (["--frames", "4", "--batch", "8"], "must not exceed"),
    (["--block", "0"], "--block must be >= 1"),
    (["--cutoff", "-0.5"], "positive"),
])
def test_bad_arguments_are_input_errors(argv, match):
    from diffmd import InputError

    with pytest.raises(InputError, match=match):
        _training().resolve_args(argv)


def test_dataset_labels_are_the_amber_model(tmp_path):
    import jax

    import diffmd
    import diffmd.data

    tr = _training()
    path = tmp_path / "frames.npz"
    info = tr.make_dataset(path, frames=3, noise=0.005, seed=1)
    data = np.load(path)
    assert data["positions"].shape == (3, 22, 3) and info["atoms"] == 22
    assert not np.allclose(data["positions"][0], data["x0"])  # perturbed
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn()
    x = data["positions"][2]
    e, g = jax.value_and_grad(energy_fn, argnums=1)(params, x, None, None)
    np.testing.assert_allclose(data["energies"][2], float(e), rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(data["forces"][2], -np.asarray(g), rtol=1e-6, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffmd-schnet", "jaxmd-gnn"])
def test_engine_trains_and_runs_md(tmp_path, name):
    import jax

    tr = _training()
    path = tmp_path / "frames.npz"
    tr.make_dataset(path, frames=8, noise=0.005)
    args = tr.resolve_args(["--quick"])
    engine = tr.make_engine(tr.engine_spec(name, args, str(path)))
    setup = engine.setup()
    assert setup["parameters"] > 0
    before = jax.tree_util.tree_leaves(engine.params)
    engine.run(2)
    assert np.isfinite(engine.last_loss)
    after = jax.tree_util.tree_leaves(engine.params)
    assert any(not np.allclose(a, b) for a, b in zip(before, after))  # the optimizer step moved the weights
    engine.use(kind="md")
    check = engine.temperature(blocks=2)
    assert check["finite"] and check["steps"] == 2 * args.block and not check["neighbor_overflow"]


@pytest.mark.slow
def test_bench_training_quick_end_to_end(tmp_path):
    from diffmd.cli._bench import main

    path = tmp_path / "training.json"
    assert main(["training", "--quick", "--engines", "diffmd-schnet,jaxmd-gnn", "--no-record",
                 "--json", str(path)]) == 0
    rec = json.loads(path.read_text())["engines"]
    for name in ("diffmd-schnet", "jaxmd-gnn"):
        assert rec[name]["train_steps_per_s"] > 0 and rec[name]["md_steps_per_s"] > 0, rec[name]
