"""Checkpoints: bit-identical restarts, dtypes and PRNG keys preserved, crash-safe replacement."""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmd import InputError
from diffmd.io import find_checkpoint, read_checkpoint_metadata, restore_checkpoint, save_checkpoint

pytest.importorskip("orbax.checkpoint")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ToyState:
    positions: jax.Array
    velocities: jax.Array
    key: jax.Array  # typed key (jax.random.key)
    raw_key: jax.Array  # legacy uint32 key (jax.random.PRNGKey)
    step: jax.Array
    neighbors: jax.Array  # integer table, as the runner's neighbor list
    empty: jax.Array  # zero-size leaf (orbax cannot store these itself)


def _init(n=16):
    k0, k1 = jax.random.split(jax.random.key(42))
    return ToyState(
        positions=jax.random.normal(k1, (n, 3), jnp.float32),
        velocities=jnp.zeros((n, 3), jnp.float32),
        key=k0,
        raw_key=jax.random.PRNGKey(7),
        step=jnp.zeros((), jnp.int32),
        neighbors=jnp.tile(jnp.arange(n, dtype=jnp.int32), (n, 1)),
        empty=jnp.zeros((0, 3), jnp.float32),
    )


def _langevin_step(state, _):
    # BAOAB-like update on a harmonic well: noise from both key kinds, so any key mismatch shows
    dt, gamma, kt = 0.01, 1.0, 1.0
    key, sub = jax.random.split(state.key)
    raw_key, raw_sub = jax.random.split(state.raw_key)
    c1 = jnp.exp(-gamma * dt)
    noise = jax.random.normal(sub, state.velocities.shape, jnp.float32)
    noise += 1e-3 * jax.random.uniform(raw_sub, state.velocities.shape, jnp.float32)
    v = state.velocities - dt * state.positions
    v = c1 * v + jnp.sqrt((1 - c1**2) * kt) * noise
    x = state.positions + dt * v
    nbr = jnp.roll(state.neighbors, 1, axis=1)
    return dataclasses.replace(state, positions=x, velocities=v, key=key, raw_key=raw_key,
                               step=state.step + 1, neighbors=nbr), None


@jax.jit
def _run(state):
    return jax.lax.scan(_langevin_step, state, None, length=50)[0]


def _assert_bit_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restart_is_bit_identical(tmp_path):
    straight = _run(_run(_init()))
    half = _run(_init())
    save_checkpoint(tmp_path, half, {"step": int(half.step), "dt_ps": 0.002})
    restored, meta = restore_checkpoint(tmp_path, like=_init())
    assert meta == {"step": 50, "dt_ps": 0.002}
    assert isinstance(restored, ToyState)
    _assert_bit_identical(restored, half)
    assert jax.random.key_impl(restored.key) == "threefry2x32" and restored.raw_key.dtype == jnp.uint32
    resumed = _run(restored)
    assert int(resumed.step) == 100
    _assert_bit_identical(resumed, straight)


def test_restore_into_abstract_template_and_without_template(tmp_path, monkeypatch):
    state = _run(_init())
    monkeypatch.chdir(tmp_path)
    save_checkpoint("run", state)  # a relative path (orbax itself wants absolute ones)
    tmp_path = tmp_path / "run"
    restored, _ = restore_checkpoint(tmp_path, like=jax.eval_shape(_init))
    _assert_bit_identical(restored, state)
    flat, _ = restore_checkpoint(tmp_path)
    assert set(flat) == {".positions", ".velocities", ".key", ".raw_key", ".step", ".neighbors", ".empty"}
    np.testing.assert_array_equal(flat[".positions"], state.positions)


def test_leaf_kinds_and_dtypes(tmp_path):
    tree = {
        "f64": np.linspace(0, 1, 7),
        "f32": jnp.arange(3, dtype=jnp.float32) / 3,
        "bf16": jnp.array([1.5, -2.25], dtype=jnp.bfloat16),
        "i8": np.array([-3, 4], np.int8),
        "mask": np.array([True, False]),
        "rbg_keys": jax.random.split(jax.random.key(3, impl="rbg"), 4),
        "py_int": 12345678901,
        "py_float": 0.1,
        "nested": [np.zeros(0, np.int64), {"u32": np.array([2**32 - 1], np.uint32)}],
    }
    save_checkpoint(tmp_path, tree)
    restored, meta = restore_checkpoint(tmp_path, like=tree)
    assert meta == {}
    assert isinstance(restored["f64"], np.ndarray) and isinstance(restored["f32"], jax.Array)
    assert restored["py_int"] == 12345678901 and type(restored["py_float"]) is float
    assert jax.random.key_impl(restored["rbg_keys"]) == "rbg" and restored["rbg_keys"].shape == (4,)
    _assert_bit_identical(
        {k: v for k, v in restored.items() if not k.startswith("py")},
        {k: v for k, v in tree.items() if not k.startswith("py")},
    )


def test_float64_needs_x64_to_restore_as_jax(tmp_path):
    save_checkpoint(tmp_path, {"x": jnp.arange(3, dtype=jnp.float64)})  # conftest enables x64
    with jax.enable_x64(False):
        with pytest.raises(InputError, match="64-bit"):
            restore_checkpoint(tmp_path)


def test_template_mismatch_names_the_leaf(tmp_path):
    save_checkpoint(tmp_path, _init())
    wrong = dataclasses.replace(_init(), positions=jnp.zeros((5, 3), jnp.float32))
    with pytest.raises(InputError, match=r"\.positions"):
        restore_checkpoint(tmp_path, like=wrong)
    wrong = dataclasses.replace(_init(), step=jnp.zeros((), jnp.int64))
    with pytest.raises(InputError, match=r"\.step"):
        restore_checkpoint(tmp_path, like=wrong)
    with pytest.raises(InputError, match="leaves"):
        restore_checkpoint(tmp_path, like={"a": jnp.zeros(2)})


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "nothing")
    with pytest.raises(InputError, match="str"):
        save_checkpoint(tmp_path, {"name": "water"})
    with pytest.raises(InputError, match="JSON"):
        save_checkpoint(tmp_path, {"x": np.zeros(2)}, metadata={"bad": object()})
    assert find_checkpoint(tmp_path) is None  # failed saves leave no checkpoint behind


def test_replacement_keeps_last_good_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"x": np.array([1.0])}, {"step": 1})
    save_checkpoint(tmp_path, {"x": np.array([2.0])}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert read_checkpoint_metadata(tmp_path) == {"step": 2}

    # crash after the old copy was moved aside and while the new one was still being written
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.new").mkdir()
    assert find_checkpoint(tmp_path).name == "checkpoint.old"
    state, meta = restore_checkpoint(tmp_path)
    assert meta == {"step": 2} and state["['x']"][0] == 2.0

    # the next save recovers: one complete checkpoint, nothing left over
    save_checkpoint(tmp_path, {"x": np.array([3.0])}, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert restore_checkpoint(tmp_path)[1] == {"step": 3}

    # crash between the two renames: the complete new copy wins over the old one
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.new")
    meta = json.loads((tmp_path / "checkpoint.new" / "metadata.json").read_text())
    assert meta["metadata"] == {"step": 3}
    assert find_checkpoint(tmp_path).name == "checkpoint.new"


def test_a_kill_at_any_moment_of_a_save_leaves_a_good_checkpoint(tmp_path, monkeypatch):
    """Copies of the folder taken at every step of a replacement (before and after each rename and
    deletion, inside orbax's write, a deletion cut short) stand for a SIGKILL there: each one holds
    a complete checkpoint, the old or the new, that restores consistently, and the next save
    leaves exactly one checkpoint behind."""
    import orbax.checkpoint as ocp

    import diffmd.io._checkpoint as ck

    root, copies = tmp_path / "run", []
    save_checkpoint(root, {"x": np.full(50, 1.0)}, {"step": 1})

    def snapshot(mangle=None):
        dest = tmp_path / f"kill-{len(copies):02d}"
        shutil.copytree(root, dest)
        if mangle is not None:
            mangle(dest)
        copies.append(dest)

    def half_deleted(path):  # rmtree stopped by a kill: some files gone, metadata.json maybe not
        def mangle(dest):
            files = sorted(p for p in (dest / path.relative_to(root)).rglob("*") if p.is_file())
            for f in files[::2]:
                f.unlink()
        return mangle

    def partial_orbax_write(dest):  # orbax killed mid-write: only its tmp folder, half filled
        for staged in dest.glob("checkpoint.new.*"):
            tmp = staged / "state.orbax-checkpoint-tmp"
            (staged / "state").rename(tmp)
            for f in sorted(p for p in tmp.rglob("*") if p.is_file())[::2]:
                f.unlink()

    real_replace, real_rmtree, real_save = ck.os.replace, ck.shutil.rmtree, ocp.PyTreeCheckpointer.save

    def replace(src, dst):
        snapshot()
        real_replace(src, dst)
        snapshot()

    def rmtree(path, *args, **kwargs):
        snapshot(half_deleted(pathlib.Path(path)))
        real_rmtree(path, *args, **kwargs)

    def orbax_save(self, directory, *args, **kwargs):
        snapshot()
        real_save(self, directory, *args, **kwargs)
        snapshot(partial_orbax_write)

    monkeypatch.setattr(ck.os, "replace", replace)
    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", orbax_save)
    save_checkpoint(root, {"x": np.full(50, 2.0)}, {"step": 2})
    monkeypatch.undo()
    assert len(copies) >= 8
    for dest in copies:
        state, meta = restore_checkpoint(dest)
        assert meta["step"] in (1, 2) and np.all(state["['x']"] == meta["step"]), dest.name
        save_checkpoint(dest, {"x": np.full(50, 3.0)}, {"step": 3})
        assert sorted(p.name for p in dest.iterdir()) == ["checkpoint"], dest.name
        assert restore_checkpoint(dest)[1] == {"step": 3}


def test_leftovers_of_killed_saves_are_ignored_and_cleared(tmp_path):
    """What killed saves leave (an orbax tmp folder still being filled, a staged copy without its
    completion mark, a half-discarded one) never shadows the checkpoint and goes with the next save."""
    save_checkpoint(tmp_path, {"x": np.array([1.0])}, {"step": 1})
    junk = tmp_path / "checkpoint.new.123-456" / "state.orbax-checkpoint-tmp" / "d"
    junk.mkdir(parents=True)
    (junk / "part").write_bytes(b"\x00" * 10)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.trash.1-2.checkpoint.old.1-2")
    (tmp_path / "checkpoint.old.9-9").mkdir()
    assert find_checkpoint(tmp_path).name == "checkpoint"
    assert restore_checkpoint(tmp_path)[1] == {"step": 1}
    save_checkpoint(tmp_path, {"x": np.array([2.0])}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert restore_checkpoint(tmp_path)[1] == {"step": 2}


def test_a_leftover_that_cannot_be_deleted_does_not_stop_the_run(tmp_path, monkeypatch):
    """A killed save's orbax tmp folder that refuses deletion ('[Errno 39] Directory not empty', as a
    resumed run met it) is set aside and ignored; the save goes through."""
    import errno

    import diffmd.io._checkpoint as ck

    save_checkpoint(tmp_path, {"x": np.array([1.0])}, {"step": 1})
    stuck = tmp_path / "checkpoint.new" / "state.orbax-checkpoint-tmp"
    stuck.mkdir(parents=True)
    (stuck / "lingering").write_bytes(b"\x00")
    real_rmtree = ck.shutil.rmtree

    def rmtree(path, ignore_errors=False, **kwargs):
        if any(p.name == "state.orbax-checkpoint-tmp" for p in pathlib.Path(path).rglob("*")):
            if ignore_errors:
                return
            raise OSError(errno.ENOTEMPTY, "Directory not empty", "state.orbax-checkpoint-tmp")
        real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    save_checkpoint(tmp_path, {"x": np.array([2.0])}, {"step": 2})
    assert find_checkpoint(tmp_path).name == "checkpoint"
    assert restore_checkpoint(tmp_path)[1] == {"step": 2}
    assert all(p.name == "checkpoint" or p.name.startswith("checkpoint.trash.") for p in tmp_path.iterdir())
