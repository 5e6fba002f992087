"""Checkpoints: save and restore a pytree of arrays bit for bit, keeping the last good one.

The runner's state (positions, velocities, PRNG key, step, integrator fields, neighbor
table) is an arbitrary pytree of jax/numpy arrays. :func:`save_checkpoint` writes it with
orbax-checkpoint to ``DIR/checkpoint/`` together with ``metadata.json`` (user metadata and,
per leaf, its tree path, kind, dtype and shape). :func:`restore_checkpoint` reads it back
with identical bits and dtypes.

Leaf kinds: jax arrays come back as jax arrays (on the template's sharding when a template is
given), numpy arrays as numpy arrays, Python scalars as Python scalars, and new-style typed
PRNG keys (``jax.random.key``) as typed keys of the same implementation (stored as their raw
``uint32`` key data). Raw ``uint32`` keys are ordinary arrays. Zero-size arrays, which orbax
refuses, live in the metadata alone.

Replacement is crash-safe, also against SIGKILL at any moment (a preempted job): each save
writes a directory of its own, ``DIR/checkpoint.new.<token>/`` (``metadata.json`` last, as its
completion mark), renames the previous ``checkpoint/`` to ``checkpoint.old.<token>``, the new
directory to ``checkpoint/``, and only then deletes the old one. Nothing is deleted before the new
copy is complete, and deletion goes through a rename to ``checkpoint.trash.<token>`` first, so a
half-deleted directory never looks complete. Whatever a kill interrupts (orbax's own
``*.orbax-checkpoint-tmp`` directories included), one complete checkpoint remains,
:func:`restore_checkpoint` finds it, and the next save clears the leftovers (best effort: a
leftover that cannot be deleted is ignored, never an error). Single-process runs only (multi-host
orbax saves need coordinated renames).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError

_FORMAT = "diffmd-checkpoint"
_VERSION = 1
_CURRENT, _NEW, _OLD, _TRASH = "checkpoint", "checkpoint.new", "checkpoint.old", "checkpoint.trash"


def _leaf_record(path, leaf) -> tuple[dict, np.ndarray]:
    name = jax.tree_util.keystr(path)
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(leaf))
        kind, impl = "key", str(jax.random.key_impl(leaf))
    elif isinstance(leaf, jax.Array):
        data, kind, impl = np.asarray(leaf), "jax", None
    elif isinstance(leaf, (np.ndarray, np.generic)):
        data, kind, impl = np.asarray(leaf), "numpy", None
    elif isinstance(leaf, (bool, int, float)):
        data, kind, impl = np.asarray(leaf), type(leaf).__name__, None
    else:
        raise InputError(
            f"checkpoint leaf {name} is a {type(leaf).__name__}; only jax/numpy arrays and Python "
            "scalars can be checkpointed (put strings and other metadata in `metadata`)"
        )
    record = {"path": name, "kind": kind, "dtype": data.dtype.name, "shape": list(data.shape), "key_impl": impl}
    return record, data


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory, state, metadata: dict | None = None) -> pathlib.Path:
    """Save ``state`` to ``directory/checkpoint/``, replacing the previous checkpoint atomically.

    Args:
        directory: the run's output directory (created if missing).
        state: a pytree of jax arrays, numpy arrays, typed PRNG keys and Python scalars.
        metadata: small JSON-serialisable dict (step, time, settings) stored alongside.

    Returns:
        The checkpoint directory ``directory/checkpoint``.

    Raises:
        InputError: a leaf that is not an array or scalar, or metadata that is not JSON.
    """
    import orbax.checkpoint as ocp

    root = pathlib.Path(directory).resolve()  # orbax (tensorstore) needs absolute paths
    root.mkdir(parents=True, exist_ok=True)
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    records, arrays = [], {}
    for k, (path, leaf) in enumerate(leaves):
        record, data = _leaf_record(path, leaf)
        record["stored"] = data.size > 0
        if record["stored"]:
            arrays[f"leaf_{k:06d}"] = data
        records.append(record)
    try:
        meta_text = json.dumps({"format": _FORMAT, "version": _VERSION, "leaves": records,
                                "metadata": metadata or {}}, indent=1, default=_json_default)
    except TypeError as exc:
        raise InputError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc

    # a name no earlier (killed) save can have used, so nothing must be deleted before writing
    token = f"{os.getpid()}-{time.time_ns()}"
    new, current, old = root / f"{_NEW}.{token}", root / _CURRENT, root / f"{_OLD}.{token}"
    new.mkdir()
    try:
        if arrays:
            ocp.PyTreeCheckpointer().save(new / "state", arrays)
        tmp = new / "metadata.json.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(meta_text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, new / "metadata.json")
        _fsync_dir(new)
    except BaseException:
        _discard(new, token)
        raise
    if current.exists():
        os.replace(current, old)
    os.replace(new, current)
    _fsync_dir(root)
    for leftover in _leftovers(root):  # the previous copy, and what killed saves left behind
        _discard(leftover, token)
    return current


def _leftovers(root: pathlib.Path) -> list[pathlib.Path]:
    """Every directory of ``root`` named like a staged, replaced or discarded checkpoint."""
    return [p for p in root.iterdir()
            if p.is_dir() and any(p.name == n or p.name.startswith(n + ".") for n in (_NEW, _OLD, _TRASH))]


def _discard(path: pathlib.Path, token: str) -> None:
    """Delete a directory, renaming it out of the checkpoint names first (best effort).

    The rename makes the removal look atomic to :func:`find_checkpoint`: ``rmtree`` deletes
    entry by entry, and a directory that still held its ``metadata.json`` would otherwise pass
    for a complete checkpoint after a kill in the middle of it.
    """
    trash = path
    if not path.name.startswith(_TRASH):
        trash = path.with_name(f"{_TRASH}.{token}.{path.name}")
        try:
            os.replace(path, trash)
        except OSError:
            return
    shutil.rmtree(trash, ignore_errors=True)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def find_checkpoint(directory) -> pathlib.Path | None:
    """The complete checkpoint under ``directory`` to restore (None if there is none).

    ``checkpoint/`` normally; after a kill between a save's two renames (no ``checkpoint/``),
    the complete staged or replaced copy (``checkpoint.new.*``, ``checkpoint.old.*``) with the
    latest step, a new copy before an old one. Directories without ``metadata.json`` (a save
    that was interrupted) and discarded ones (``checkpoint.trash.*``) are ignored.
    """
    root = pathlib.Path(directory).resolve()
    if (root / _CURRENT / "metadata.json").is_file():
        return root / _CURRENT
    if not root.is_dir():
        return None
    ranked = []
    for path in _leftovers(root):
        if path.name.startswith(_TRASH) or not (path / "metadata.json").is_file():
            continue
        try:
            with open(path / "metadata.json", encoding="utf-8") as fh:
                step = json.load(fh).get("metadata", {}).get("step", -1)
        except (OSError, ValueError):
            continue
        ranked.append((step if isinstance(step, int) else -1, path.name.startswith(_NEW), path.name, path))
    return max(ranked)[3] if ranked else None


def read_checkpoint_metadata(directory) -> dict:
    """The user metadata of the checkpoint under ``directory`` (without loading arrays)."""
    return _load_meta(directory)[1]["metadata"]


def _load_meta(directory):
    where = find_checkpoint(directory)
    if where is None:
        raise InputError(f"no checkpoint in {os.fspath(directory)!r} (expected {_CURRENT}/metadata.json)")
    with open(where / "metadata.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise InputError(f"{where}: not a diffmd checkpoint of version {_VERSION}")
    return where, meta


def _rebuild(record: dict, data: np.ndarray, template):
    kind = record["kind"]
    if kind == "numpy":
        return data
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](data.item())
    if kind == "key":
        leaf = jax.random.wrap_key_data(jnp.asarray(data), impl=record["key_impl"])
    else:
        leaf = jnp.asarray(data)
        if leaf.dtype != data.dtype:
            raise InputError(
                f"checkpoint leaf {record['path']} is {data.dtype} but JAX would load it as "
                f"{leaf.dtype}; enable 64-bit mode (jax.config.update('jax_enable_x64', True)) "
                "before restoring, as the run that saved it did"
            )
    sharding = getattr(template, "sharding", None)
    if sharding is not None:
        leaf = jax.device_put(leaf, sharding)
    return leaf


def restore_checkpoint(directory, like=None):
    """Restore the checkpoint under ``directory`` bit for bit.

    Args:
        directory: the run's output directory (the one passed to :func:`save_checkpoint`).
        like: a template pytree with the saved structure (arrays or ``jax.ShapeDtypeStruct``,
            e.g. the freshly initialised state or ``jax.eval_shape`` of it). Shapes and dtypes
            are checked leaf by leaf; jax leaves go onto the template's sharding. Without a
            template the result is a dict from tree path (``jax.tree_util.keystr``) to leaf.

    Returns:
        ``(state, metadata)``.

    Raises:
        InputError: no checkpoint, or a template whose structure, shapes or dtypes differ
            (the message names the leaf).
    """
    import orbax.checkpoint as ocp

    where, meta = _load_meta(directory)
    records = meta["leaves"]
    stored = {f"leaf_{k:06d}": r for k, r in enumerate(records) if r["stored"]}
    arrays = {}
    if stored:
        restore_args = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in stored}
        arrays = ocp.PyTreeCheckpointer().restore(
            where / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args))
    datas = []
    for k, record in enumerate(records):
        if record["stored"]:
            data = np.asarray(arrays[f"leaf_{k:06d}"])
        else:
            data = np.zeros(record["shape"], dtype=jnp.dtype(record["dtype"]))
        if data.dtype.name != record["dtype"] or list(data.shape) != record["shape"]:
            raise InputError(f"{where}: leaf {record['path']} is corrupt (dtype/shape differ from metadata)")
        datas.append(data)

    if like is None:
        state = {r["path"]: _rebuild(r, d, None) for r, d in zip(records, datas)}
        return state, meta["metadata"]
    template, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(template) != len(records):
        raise InputError(f"{where}: checkpoint has {len(records)} leaves, the template has {len(template)}; "
                         "restore with a state built by the same integrator and settings")
    leaves = []
    for (path, tleaf), record, data in zip(template, records, datas):
        name = jax.tree_util.keystr(path)
        if name != record["path"]:
            raise InputError(f"{where}: checkpoint leaf {record['path']} does not match template leaf {name}")
        is_key = record["kind"] == "key"
        # typed keys are stored as their key data, which has one more (trailing) axis
        shape = tuple(record["shape"][:-1] if is_key else record["shape"])
        t_shape = tuple(tleaf.shape) if hasattr(tleaf, "shape") else np.shape(tleaf)
        t_dtype = getattr(tleaf, "dtype", None)
        if is_key != (t_dtype is not None and jnp.issubdtype(t_dtype, jax.dtypes.prng_key)):
            raise InputError(f"{where}: leaf {name} is a typed PRNG key in only one of checkpoint and template")
        dtype_differs = not is_key and t_dtype is not None and jnp.dtype(t_dtype).name != record["dtype"]
        if t_shape != shape or dtype_differs:
            raise InputError(f"{where}: leaf {name} is {record['dtype']}{list(shape)} in the checkpoint but "
                             f"{t_dtype}{list(t_shape)} in the template")
        leaves.append(_rebuild(record, data, tleaf if isinstance(tleaf, (jax.Array, jax.ShapeDtypeStruct)) else None))
    return jax.tree_util.tree_unflatten(treedef, leaves), meta["metadata"]
