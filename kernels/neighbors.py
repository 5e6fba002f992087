"""Neighbor tables: for every atom, the partners within a cutoff plus a skin.

The table is a full (both directions) padded array ``idx`` of shape
(n_atoms, capacity): row i lists the atoms j != i with |r_ij| < cutoff + skin
that are not excluded from nonbonded interactions, padded with the value
``n_atoms``. Excluded pairs never enter the table, so nothing is computed and
then subtracted (which loses digits in float32 at bonded distances).

Building is O(N): atoms are binned into a cell grid (in fractional
coordinates for periodic boxes, over the bounding box otherwise), candidates
come from the 27 surrounding cells, and rows are compacted by a prefix count.
Small systems whose box holds fewer than three cells along an axis use all
atoms as candidates instead. Rows are built in chunks so temporaries stay
small (no N x N array).

``update_neighbors`` is jit-able: it rebuilds only when some atom moved more
than half the skin (or the box changed), and sets ``overflow`` when a row or a
cell needed more room than allocated; the caller then re-allocates on the host
and repeats the work (see ``diffmd.simulate``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .geometry import check_cutoff_fits, minimum_image

_CHUNK = 256


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["idx", "reference_positions", "reference_box", "exclusions", "needed", "overflow"],
    meta_fields=["cutoff", "skin", "grid", "cell_capacity", "dense"],
)
@dataclasses.dataclass(frozen=True)
class Neighbors:
    """A neighbor table and what is needed to keep it current.

    Attributes:
        idx: (n_atoms, capacity) int32 partner indices, padded with n_atoms.
        reference_positions: (n_atoms, 3) positions [nm] at the last build.
        reference_box: (3, 3) box [nm] at the last build (zeros without a box).
        exclusions: (n_atoms, n_excl) int32 excluded partners, padded with n_atoms.
        needed: int32 scalar, the largest row (or cell) occupancy seen since
            allocation; the host sizes a re-allocation from it.
        overflow: bool scalar, set (and kept) when a build did not fit.
        cutoff: interaction cutoff [nm] (static; ``inf`` for a dense table).
        skin: extra distance [nm] that lets the table live for several steps
            (static).
        grid: cells per axis (static; ``None`` means all atoms are candidates).
            Changing it recompiles.
        cell_capacity: atoms a cell can hold (static). Changing it recompiles.
        dense: True for a table of every non-excluded pair (no cutoff); it is
            never rebuilt.
    """

    idx: jax.Array
    reference_positions: jax.Array
    reference_box: jax.Array
    exclusions: jax.Array
    needed: jax.Array
    overflow: jax.Array
    cutoff: float
    skin: float
    grid: tuple | None
    cell_capacity: int
    dense: bool

    @property
    def capacity(self) -> int:
        """Partners a row can hold (static)."""
        return self.idx.shape[-1]


def exclusion_table(n_atoms: int, pairs) -> np.ndarray:
    """Host-side (n_atoms, max_excluded) table of excluded partners (both ways).

    Args:
        n_atoms: number of atoms.
        pairs: (P, 2) integer array of excluded pairs (any order, duplicates ok).

    Returns:
        int32 array padded with ``n_atoms``.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = np.unique(both, axis=0)
    counts = np.bincount(both[:, 0], minlength=n_atoms)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    table = np.full((n_atoms, width), n_atoms, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(both)) - starts[both[:, 0]]
    table[both[:, 0], slot] = both[:, 1]
    return table


def dense_neighbors(n_atoms: int, exclusions: np.ndarray, positions=None) -> Neighbors:
    """Every non-excluded pair, for nonbonded methods without a cutoff (host, numpy).

    The table has n_atoms * (n_atoms - 1) entries, which is what an all-pairs
    method costs anyway; it is built row block by row block.
    """
    rows = []
    width = 0
    for start in range(0, n_atoms, 1024):
        stop = min(start + 1024, n_atoms)
        mask = np.ones((stop - start, n_atoms + 1), dtype=bool)
        r = np.arange(stop - start)
        mask[r, np.arange(start, stop)] = False
        np.put_along_axis(mask, exclusions[start:stop].astype(np.int64), False, axis=1)
        mask = mask[:, :n_atoms]
        width = max(width, int(mask.sum(1).max()) if n_atoms > 1 else 0)
        rows.append(mask)
    width = max(width, 1)
    idx = np.full((n_atoms, width), n_atoms, dtype=np.int32)
    for block, start in zip(rows, range(0, n_atoms, 1024)):
        for k, row in enumerate(block):
            js = np.nonzero(row)[0]
            idx[start + k, : len(js)] = js
    if positions is None:
        positions = np.zeros((n_atoms, 3))
    return Neighbors(
        idx=jnp.asarray(idx),
        reference_positions=jnp.asarray(positions),
        reference_box=jnp.zeros((3, 3), jnp.asarray(positions).dtype),
        exclusions=jnp.asarray(exclusions, jnp.int32),
        needed=jnp.asarray(width, jnp.int32),
        overflow=jnp.asarray(False),
        cutoff=math.inf,
        skin=math.inf,
        grid=None,
        cell_capacity=0,
        dense=True,
    )


def _grid_for(positions, box, list_cutoff: float):
    """Cells per axis (host). ``None`` when fewer than 3 cells fit on some axis."""
    positions = np.asarray(positions, dtype=np.float64)
    if box is None:
        extent = positions.max(0) - positions.min(0) if len(positions) else np.zeros(3)
        n = np.floor(extent / list_cutoff).astype(int)
    else:
        box = np.asarray(box, dtype=np.float64)
        volume = abs(np.linalg.det(box))
        a, b, c = box
        widths = volume / np.array(
            [np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)), np.linalg.norm(np.cross(a, b))]
        )
        n = np.floor(widths / list_cutoff).astype(int)
    if np.any(n < 3):
        return None
    return tuple(int(v) for v in n)


def _cell_coords(positions, box, grid, list_cutoff):
    """Integer cell coordinates (N, 3) of every atom."""
    n = jnp.asarray(grid)
    if box is None:
        lo = jnp.min(positions, axis=0)
        extent = jnp.max(positions, axis=0) - lo
        # never let a cell get narrower than the list cutoff
        width = jnp.maximum(extent / n, list_cutoff)
        c = jnp.floor((positions - lo[None, :]) / width[None, :]).astype(jnp.int32)
    else:
        frac = jnp.linalg.solve(box.T, positions.T).T
        frac = frac - jnp.floor(frac)
        c = jnp.floor(frac * n[None, :]).astype(jnp.int32)
    return jnp.clip(c, 0, n[None, :] - 1)


def _cell_candidates(positions, box, grid, cell_capacity, list_cutoff):
    """(N, 27 * cell_capacity) candidate partners and the fullest cell's count."""
    n_atoms = positions.shape[0]
    nx, ny, nz = grid
    n_cells = nx * ny * nz
    cc = _cell_coords(positions, box, grid, list_cutoff)
    cell = (cc[:, 0] * ny + cc[:, 1]) * nz + cc[:, 2]
    order = jnp.argsort(cell)
    sorted_cell = cell[order]
    start = jnp.searchsorted(sorted_cell, jnp.arange(n_cells))
    rank = jnp.arange(n_atoms) - start[sorted_cell]
    counts = jnp.bincount(cell, length=n_cells)
    dump = n_cells * cell_capacity
    slot = jnp.where(rank < cell_capacity, sorted_cell * cell_capacity + rank, dump)
    table = jnp.full((dump + 1,), n_atoms, jnp.int32).at[slot].set(order.astype(jnp.int32))
    # one extra empty cell (index n_cells) stands for "outside the grid"
    table = jnp.concatenate([table[:dump], jnp.full((cell_capacity,), n_atoms, jnp.int32)])
    table = table.reshape(n_cells + 1, cell_capacity)

    offsets = jnp.asarray([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    nb = cc[:, None, :] + offsets[None, :, :]  # (N, 27, 3)
    dims = jnp.asarray(grid)
    if box is None:
        outside = jnp.any((nb < 0) | (nb >= dims[None, None, :]), axis=-1)
        nb = jnp.clip(nb, 0, dims[None, None, :] - 1)
    else:
        outside = jnp.zeros(nb.shape[:2], bool)
        nb = nb % dims[None, None, :]
    nb_cell = (nb[..., 0] * ny + nb[..., 1]) * nz + nb[..., 2]
    nb_cell = jnp.where(outside, n_cells, nb_cell)
    return nb_cell, table, jnp.max(counts)


def _compact_rows(rows_i, candidates, positions, box, exclusions, list_cutoff, capacity):
    """Keep candidates within the list cutoff, pack them left into ``capacity`` slots.

    Returns (idx (B, capacity), count (B,)).
    """
    n_atoms = positions.shape[0]
    pos_pad = jnp.concatenate([positions, jnp.zeros((1, 3), positions.dtype)])
    dr = minimum_image(pos_pad[candidates] - pos_pad[rows_i][:, None, :], box)
    d2 = jnp.sum(dr * dr, axis=-1)
    keep = (d2 < list_cutoff * list_cutoff) & (candidates != rows_i[:, None]) & (candidates < n_atoms)
    count = jnp.sum(keep, axis=1)
    slot = jnp.cumsum(keep, axis=1) - 1
    b = candidates.shape[0]
    flat = jnp.where(keep & (slot < capacity), jnp.arange(b)[:, None] * (capacity + 1) + slot, b * (capacity + 1) - 1)
    out = jnp.full((b * (capacity + 1),), n_atoms, jnp.int32).at[flat.ravel()].set(candidates.ravel().astype(jnp.int32))
    out = out.reshape(b, capacity + 1)[:, :capacity]
    # drop excluded partners after compaction: (B, K, E) tests instead of (B, 27 M, E)
    excl = exclusions[jnp.minimum(rows_i, n_atoms - 1)]
    excluded = jnp.any(out[:, :, None] == excl[:, None, :], axis=-1)
    return jnp.where(excluded, n_atoms, out), count


def build_table(positions, box, exclusions, *, list_cutoff, capacity, grid, cell_capacity):
    """Build the (N, capacity) table (jit-able). Returns (idx, needed)."""
    n_atoms = positions.shape[0]
    n_pad = -(-n_atoms // _CHUNK) * _CHUNK
    rows = jnp.arange(n_pad).reshape(-1, _CHUNK)
    rows = jnp.where(rows < n_atoms, rows, n_atoms)
    if grid is None:
        all_atoms = jnp.arange(n_atoms, dtype=jnp.int32)

        def one_chunk(rows_i):
            cand = jnp.broadcast_to(all_atoms, (rows_i.shape[0], n_atoms))
            return _compact_rows(rows_i, cand, positions, box, exclusions, list_cutoff, capacity)

        cell_need = jnp.asarray(0, jnp.int32)
    else:
        nb_cell, table, cell_need = _cell_candidates(positions, box, grid, cell_capacity, list_cutoff)
        nb_cell = jnp.concatenate([nb_cell, jnp.zeros((1, 27), nb_cell.dtype)])

        def one_chunk(rows_i):
            cand = table[nb_cell[rows_i]].reshape(rows_i.shape[0], -1)
            return _compact_rows(rows_i, cand, positions, box, exclusions, list_cutoff, capacity)

    idx, count = jax.lax.map(one_chunk, rows)
    idx = idx.reshape(n_pad, capacity)[:n_atoms]
    count = count.reshape(n_pad)[:n_atoms]
    row_need = jnp.max(count).astype(jnp.int32)
    # a cell that overflowed may hide partners: report it as a need too
    overflow = (row_need > capacity) | (cell_need > cell_capacity)
    return idx, row_need, cell_need.astype(jnp.int32), overflow


def allocate_neighbors(positions, box, exclusions, cutoff: float, skin: float = 0.1, *, margin: float = 1.25,
                       capacity: int | None = None) -> Neighbors:
    """Size and build a neighbor table on the host.

    Args:
        positions: (N, 3) positions [nm].
        box: (3, 3) reduced box vectors [nm], or ``None``.
        exclusions: (N, E) excluded partners padded with N (``exclusion_table``).
        cutoff: interaction cutoff [nm].
        skin: extra list distance [nm]; the table is rebuilt when an atom moves
            more than skin / 2.
        margin: head-room factor on the measured row and cell occupancy.
        capacity: force a row capacity (for tests of the overflow path).

    Raises:
        InputError: NaN positions, or a box too small for cutoff + skin.
    """
    positions = np.asarray(positions)
    if not np.all(np.isfinite(positions)):
        raise InputError("positions contain NaN or Inf: cannot build a neighbor list")
    list_cutoff = float(cutoff) + float(skin)
    if box is not None:
        check_cutoff_fits(box, float(cutoff))
        if list_cutoff > 0.5 * np.min(np.diag(np.asarray(box))):
            # the skin does not fit: shrink it rather than refuse a legal cutoff
            skin = max(0.5 * float(np.min(np.diag(np.asarray(box)))) - float(cutoff), 0.0)
            list_cutoff = float(cutoff) + skin
    grid = _grid_for(positions, box, list_cutoff)
    n_atoms = positions.shape[0]
    jbox = None if box is None else jnp.asarray(box, positions.dtype)
    jpos = jnp.asarray(positions)
    jexcl = jnp.asarray(exclusions, jnp.int32)
    if grid is not None:
        cc = np.asarray(_cell_coords(jpos, jbox, grid, list_cutoff))
        cells = (cc[:, 0] * grid[1] + cc[:, 1]) * grid[2] + cc[:, 2]
        cell_capacity = int(math.ceil(np.bincount(cells).max() * margin)) + 2
    else:
        cell_capacity = 0
    if capacity is None:
        density_guess = n_atoms if grid is None else 27 * cell_capacity
        probe = min(n_atoms, density_guess)
        _, need, _, _ = _build_jit(jpos, jbox, jexcl, list_cutoff, probe, grid, cell_capacity)
        capacity = max(int(math.ceil(int(need) * margin)), 1)
        capacity = min(capacity, max(n_atoms - 1, 1))
    idx, need, cell_need, overflow = _build_jit(jpos, jbox, jexcl, list_cutoff, capacity, grid, cell_capacity)
    return Neighbors(
        idx=idx,
        reference_positions=jpos,
        reference_box=jnp.zeros((3, 3), jpos.dtype) if jbox is None else jbox,
        exclusions=jexcl,
        needed=need,
        overflow=overflow,
        cutoff=float(cutoff),
        skin=float(skin),
        grid=grid,
        cell_capacity=cell_capacity,
        dense=False,
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _build_jit(positions, box, exclusions, list_cutoff, capacity, grid, cell_capacity):
    return build_table(positions, box, exclusions, list_cutoff=list_cutoff, capacity=capacity, grid=grid,
                       cell_capacity=cell_capacity)


def update_neighbors(nbrs: Neighbors, positions, box=None) -> Neighbors:
    """Rebuild the table if any atom moved more than skin / 2 or the box changed (jit-able).

    Args:
        nbrs: the current table.
        positions: (N, 3) positions [nm].
        box: (3, 3) box [nm] or ``None``; must be ``None`` iff it was at allocation.

    Returns:
        The same table, or a rebuilt one with ``needed`` and ``overflow`` updated.
        ``overflow`` is sticky: once set it stays set until re-allocation.
    """
    if nbrs.dense:
        return nbrs
    list_cutoff = nbrs.cutoff + nbrs.skin
    ref_box = nbrs.reference_box
    dr = minimum_image(positions - nbrs.reference_positions, box)
    moved = jnp.max(jnp.sum(dr * dr, axis=-1)) > (0.5 * nbrs.skin) ** 2
    if box is not None:
        moved = moved | jnp.any(box != ref_box)

    def rebuild(_):
        idx, need, cell_need, overflow = build_table(
            positions, box, nbrs.exclusions, list_cutoff=list_cutoff, capacity=nbrs.capacity, grid=nbrs.grid,
            cell_capacity=nbrs.cell_capacity)
        new_box = ref_box if box is None else box.astype(ref_box.dtype)
        return (idx, positions.astype(nbrs.reference_positions.dtype), new_box,
                jnp.maximum(nbrs.needed, need), nbrs.overflow | overflow)

    def keep(_):
        return nbrs.idx, nbrs.reference_positions, ref_box, nbrs.needed, nbrs.overflow

    idx, ref_pos, new_box, needed, overflow = jax.lax.cond(moved, rebuild, keep, None)
    return dataclasses.replace(nbrs, idx=idx, reference_positions=ref_pos, reference_box=new_box, needed=needed,
                               overflow=overflow)
