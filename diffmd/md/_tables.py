"""The neighbor-table service of the engine: one table or a pytree of them, one policy.

A ``sum_potentials`` model carries a tuple of tables (None entries allowed), one per
part; every function here treats a single ``Neighbors`` and such a pytree alike, and the
runner, the ensemble runner, the minimizer, the barostat and dataset labelling all use them:

- ``update_tables`` (traced): refresh every table (``kernels.neighbors.update_neighbor_tables``)
  and say whether any was rebuilt;
- ``neighbor_tables`` / ``any_overflow`` (host): list the tables, read their overflow flags;
- ``reallocate`` (host): enlarge the tables that overflowed, with the one margin policy
  ``reallocation_margin(retry)`` (1.25x what a table needed on the first retry, +0.25 per
  further retry), at most ``MAX_REALLOCATIONS`` times per chunk; the caller then replays;
- ``neighbor_metadata`` / ``neighbor_template``: record and rebuild the static layout for
  checkpoints.

Positions [nm], boxes (3, 3) [nm].
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
from ..kernels.neighbors import Neighbors, allocate_neighbors, is_table, update_neighbor_tables

#: re-allocations of the tables within one chunk before the run gives up
MAX_REALLOCATIONS = 8

def neighbor_tables(neighbors) -> list:
    """The ``Neighbors`` of a table or of a pytree of tables, in pytree order (None entries skipped).

    Raises:
        InputError: a leaf that is not a ``Neighbors`` table.
    """
    tables = jax.tree_util.tree_leaves(neighbors, is_leaf=is_table)
    for t in tables:
        if not isinstance(t, Neighbors):
            raise InputError(f"neighbors must be a Neighbors table or a tuple (pytree) of them, found a "
                             f"{type(t).__name__} leaf: build them with energy_fn.neighbor_list(positions, box)")
    return tables


def any_overflow(neighbors) -> bool:
    """True when a table (any table of a pytree) has its ``overflow`` flag set (host)."""
    return any(bool(t.overflow) for t in neighbor_tables(neighbors))


def update_tables(neighbors, positions, box):
    """Refresh a table, or every table of a pytree, at ``positions`` (traced).

    Returns:
        ``(tables, rebuilt)`` where ``rebuilt`` is a bool scalar (some table was
        rebuilt), or None when no table can rebuild (None, or only dense tables).
    """
    movable = [t for t in jax.tree_util.tree_leaves(neighbors, is_leaf=is_table) if not t.dense]
    if not movable:
        return neighbors, None
    new = update_neighbor_tables(neighbors, positions, box)
    moved = [t for t in jax.tree_util.tree_leaves(new, is_leaf=is_table) if not t.dense]
    flags = [jnp.any(a.reference_positions != b.reference_positions) for a, b in zip(moved, movable)]
    return new, functools.reduce(jnp.logical_or, flags)


def reallocation_margin(retry: int) -> float:
    """Room a re-allocated table gets: ``1.25 + 0.25 * retry`` times what it needed (``retry`` 0 first)."""
    return 1.25 + 0.25 * int(retry)


def reallocate(neighbors, positions, box, retry: int, start=None):
    """Larger tables for ``positions`` after an overflow (host).

    A table's new row capacity is ``reallocation_margin(retry)`` times the larger of the
    ``needed`` count it recorded and its capacity (at most N - 1); the cell capacity is
    re-measured with the same margin (cells can overflow too). The caller replays its
    chunk from ``positions`` with the result.

    Args:
        neighbors: the tables after the chunk (their ``overflow`` and ``needed``): one
            ``Neighbors`` or a pytree of them.
        positions: (N, 3) positions [nm] the new tables are built at (the chunk's start).
        box: (3, 3) box [nm] or None.
        retry: how many re-allocations this chunk already had (0 for the first).
        start: for a pytree, the tables valid at ``positions`` (the chunk's start), kept
            where the table did not overflow; default ``neighbors``.
    """
    if not isinstance(neighbors, Neighbors):
        start = neighbors if start is None else start
        neighbor_tables(neighbors)

        def one(s, e):
            return _reallocate_table(e, positions, box, retry) if bool(e.overflow) else s

        return jax.tree_util.tree_map(one, start, neighbors, is_leaf=is_table)
    return _reallocate_table(neighbors, positions, box, retry)


def _reallocate_table(table: Neighbors, positions, box, retry: int) -> Neighbors:
    margin = reallocation_margin(retry)
    capacity = max(int(math.ceil(int(table.needed) * margin)), int(math.ceil(table.capacity * margin)))
    n_atoms = int(table.idx.shape[0])
    capacity = min(capacity, max(n_atoms - 1, 1))
    return allocate_neighbors(np.asarray(positions), None if box is None else np.asarray(box),
                              np.asarray(table.exclusions), table.cutoff, table.skin,
                              margin=margin, capacity=capacity)


def capacities(neighbors):
    """The row capacity of a table, or the list of them for a pytree (for messages)."""
    return neighbors.capacity if isinstance(neighbors, Neighbors) else [t.capacity for t in neighbor_tables(neighbors)]


def neighbor_metadata(neighbors) -> dict | None:
    """The static layout of a table, stored with checkpoints to rebuild a restore template.

    For a pytree of tables (a ``sum_potentials`` tuple): ``{"tables": [...]}`` with
    one layout per table in pytree order.
    """
    if neighbors is None:
        return None
    if not isinstance(neighbors, Neighbors):
        return {"tables": [neighbor_metadata(t) for t in neighbor_tables(neighbors)]}
    return {"capacity": int(neighbors.capacity), "grid": None if neighbors.grid is None else list(neighbors.grid),
            "cell_capacity": int(neighbors.cell_capacity), "skin": float(neighbors.skin)}


def neighbor_template(neighbors, meta: dict | None):
    """A table shaped as recorded in ``meta`` (from ``neighbor_metadata``), for restoring.

    ``neighbors`` may be a pytree of tables when ``meta`` holds ``"tables"``.

    Raises:
        InputError: ``meta`` does not describe the tables of ``neighbors`` (one
            table recorded for several, or a different number of tables).
    """
    if neighbors is None or meta is None:
        return neighbors
    several = not isinstance(neighbors, Neighbors)
    if several or "tables" in meta:
        tables = neighbor_tables(neighbors) if several else [neighbors]
        recorded = meta.get("tables")
        if not several or recorded is None or len(recorded) != len(tables):
            raise InputError(f"the checkpoint records {len(recorded) if recorded is not None else 1} neighbor "
                             f"table(s) but the energy model uses {len(tables)}: resume with the model that "
                             "wrote the checkpoint")
        filled = iter([neighbor_template(t, m) for t, m in zip(tables, recorded)])
        return jax.tree_util.tree_map(lambda _: next(filled), neighbors, is_leaf=is_table)
    if neighbors.dense:
        return neighbors
    n_atoms = int(neighbors.idx.shape[0])
    return dataclasses.replace(
        neighbors, idx=jnp.zeros((n_atoms, int(meta["capacity"])), jnp.int32),
        grid=None if meta["grid"] is None else tuple(int(g) for g in meta["grid"]),
        cell_capacity=int(meta["cell_capacity"]), skin=float(meta["skin"]))
