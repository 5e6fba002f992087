"""Host-side services for neighbor tables in the runner's carry: one table or a pytree of them.

A ``sum_potentials`` model carries a tuple of tables (None entries allowed), one per
part; these functions treat a single ``Neighbors`` and such a pytree alike:
``neighbor_tables`` lists them, ``any_overflow`` reads their overflow flags,
``reallocate`` enlarges the ones that overflowed (the runner then replays the chunk),
and ``neighbor_metadata`` / ``neighbor_template`` record and rebuild their static layout
for checkpoints. Positions [nm], boxes (3, 3) [nm].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
from ..kernels.neighbors import Neighbors, allocate_neighbors, is_table

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


def reallocate(neighbors, positions, box, attempt: int):
    """A larger table for ``positions`` after an overflow (host).

    The new row capacity is the larger of 1.25x the ``needed`` count the overflowing
    table recorded and 1.25x its capacity; the cell capacity is re-measured with a
    margin that grows with each failed attempt (cells can overflow too).

    ``neighbors`` may also be a pytree of tables (a tuple for ``sum_potentials``):
    then every table whose ``overflow`` is set is re-allocated for ``positions``
    and the others are returned as they are.
    """
    if not isinstance(neighbors, Neighbors):
        return _reallocate_overflowing(neighbors, neighbors, positions, box, attempt)
    margin = 1.25 + 0.25 * attempt
    capacity = max(int(math.ceil(int(neighbors.needed) * margin)), int(math.ceil(neighbors.capacity * margin)))
    n_atoms = int(neighbors.idx.shape[0])
    capacity = min(capacity, max(n_atoms - 1, 1))
    return allocate_neighbors(np.asarray(positions), None if box is None else np.asarray(box),
                              np.asarray(neighbors.exclusions), neighbors.cutoff, neighbors.skin,
                              margin=margin, capacity=capacity)


def _reallocate_overflowing(start, end, positions, box, attempt: int):
    """Per table: a re-allocation at ``positions`` where the ``end`` table overflowed, else the ``start`` one.

    ``start`` holds the tables valid for ``positions`` (a chunk's starting carry),
    ``end`` the same tables after the chunk (their ``overflow`` and ``needed``).
    """
    def one(s, e):
        return reallocate(e, positions, box, attempt) if bool(e.overflow) else s

    neighbor_tables(end)
    return jax.tree_util.tree_map(one, start, end, is_leaf=is_table)


def _capacities(neighbors):
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
