"""Neighbor tables: for every atom, the partners within a cutoff plus a skin.

The table is a full (both directions) padded array ``idx`` of shape
(n_atoms, capacity): row i lists the atoms j != i with |r_ij| < cutoff + skin
that are not excluded from nonbonded interactions, left-packed and padded with
the value ``n_atoms``. Excluded pairs never enter the table, so nothing is
computed and then subtracted (which loses digits in float32 at bonded
distances). Row i belongs to atom i; within a row, partners come in spatial
order, which keeps the gathers of a nonbonded kernel local.

Building (``build_table``, jit-able, O(N) work; the machinery is in
``_neighbor_build``) follows the cluster scheme of GROMACS and OpenMM's GPU
kernels, recast for dense XLA operations:

1. Atoms are sorted by grid cell, then along a Hilbert curve inside the cell,
   and every cell is padded to a multiple of 8 slots, so groups of 8
   consecutive slots ("clusters") are spatially compact and never straddle a
   cell or the periodic boundary. Atoms are never reordered for the caller.
2. Cluster bounding boxes are tested against blocks of 8 clusters, then
   against the clusters of the near blocks, giving each i-cluster a sorted list
   of j-clusters, each under the periodic image of its nearest centre.
3. For every atom, the distances to the 8 atoms of each listed j-cluster become
   one byte of a bit mask; excluded partners are cleared from the mask.
4. Masks are compacted into table slots without sorting: a prefix count of the
   set bits gives each 32-bit word its first slot, a scatter-max over the
   words' slot windows tells every slot which word it comes from, and a select
   table finds the bit.

Testing clusters at the minimum image of their centres is exact while
cutoff + skin + 2 * (largest cluster radius) stays below half the smallest box
width (one image per cluster pair). Smaller periodic boxes, and systems of
fewer than ``_MIN_CLUSTERED`` atoms, use every cluster as a candidate of every
other one, with the minimum image taken per atom pair (``grid=None``).

``update_neighbors`` is jit-able: it rebuilds only when some atom moved more
than half the skin (or the box changed), and sets ``overflow`` when a row, a
cluster list or a block list needed more room than allocated, or clusters grew
too large for the box; the caller then re-allocates on the host and repeats
the work (see ``diffmd.simulate``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from . import _neighbor_build as _search
from .errors import InputError
from .geometry import check_cutoff_fits, minimum_image

_ATOMS_PER_CELL = 100  # target occupancy of the sorting cells
_MIN_CLUSTERED = 512  # below this many atoms every cluster is a candidate


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["idx", "reference_positions", "reference_box", "exclusions", "needed", "overflow"],
    meta_fields=["cutoff", "skin", "grid", "cell_capacity", "dense"],
)
@dataclasses.dataclass(frozen=True)
class Neighbors:
    """A neighbor table and what is needed to keep it current.

    Attributes:
        idx: (n_atoms, capacity) int32 partner indices, left-packed, padded
            with n_atoms.
        reference_positions: (n_atoms, 3) positions [nm] at the last build.
        reference_box: (3, 3) box [nm] at the last build (zeros without a box).
        exclusions: (n_atoms, n_excl) int32 excluded partners, padded with
            n_atoms (``exclusion_table``: no duplicates, no self pairs).
        needed: int32 scalar, the largest row occupancy seen since allocation;
            the host sizes a re-allocation from it.
        overflow: bool scalar, set (and kept) when a build did not fit.
        cutoff: interaction cutoff [nm] (static; ``inf`` for a dense table).
        skin: extra distance [nm] that lets the table live for several steps
            (static).
        grid: static layout of the cluster search, ``(cells along a, cells
            along b, cells along c, block capacity)`` where the block capacity
            is how many 8-cluster blocks one cluster may be near; ``None``
            means all atoms are candidates. Changing it recompiles.
        cell_capacity: j-clusters (of 8 atoms) one i-cluster's candidate list
            can hold (static). Changing it recompiles.
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


def every_cluster_capacity(n_atoms: int) -> int:
    """``cell_capacity`` of the table layout that tests every cluster pair (``grid=None``).

    That layout is exact for any box and positions of ``n_atoms`` atoms, so tables of systems
    with different boxes or sizes (ensemble members, padded batches) can share one compiled
    rebuild. Changing it recompiles the rebuild.
    """
    return _search.n_slots(int(n_atoms), 1) // _search.CLUSTER


def is_table(x) -> bool:
    """Whether ``x`` is one ``Neighbors`` table (``is_leaf`` for pytrees holding tables, such as a
    summed potential's tuple)."""
    return isinstance(x, Neighbors)


def exclusion_table(n_atoms: int, pairs) -> np.ndarray:
    """Host-side (n_atoms, max_excluded) table of excluded partners (both ways).

    Args:
        n_atoms: number of atoms.
        pairs: (P, 2) integer array of excluded pairs (any order, duplicates ok).

    Returns:
        int32 array padded with ``n_atoms``, each partner once, no self pairs.
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


def build_table(positions, box, exclusions, *, list_cutoff, capacity, grid, cell_capacity):
    """Build the (N, capacity) table (jit-able).

    Args:
        positions: (N, 3) positions [nm].
        box: (3, 3) reduced box [nm] or ``None``.
        exclusions: (N, E) excluded partners padded with N (``exclusion_table``).
        list_cutoff: cutoff + skin [nm] (static).
        capacity: partners per row (static).
        grid, cell_capacity: the static layout of a ``Neighbors`` (see there).

    Returns:
        (idx (N, capacity) int32, row_need, cell_need, overflow): the largest
        row and cluster-list occupancies, and whether anything did not fit.
    """
    r = _search.build(positions, box, exclusions, float(list_cutoff), int(capacity), grid, int(cell_capacity))
    overflow = (r["row_need"] > capacity) | ~r["fits"]
    if grid is not None:
        overflow = overflow | (r["cluster_need"] > cell_capacity) | (r["block_need"] > grid[3])
    return r["idx"], r["row_need"].astype(jnp.int32), r["cluster_need"].astype(jnp.int32), overflow


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sizes_jit(positions, box, list_cutoff, cells):
    return _search.cluster_sizes(positions, box, list_cutoff, cells)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step)) * step


def _cells_for(positions: np.ndarray, box, n_atoms: int):
    """Sorting cells per axis, about ``_ATOMS_PER_CELL`` atoms each (host); None for tiny systems."""
    if n_atoms < _MIN_CLUSTERED:
        return None
    if box is None:
        widths = np.maximum(positions.max(0) - positions.min(0), 1e-3)
        volume = float(np.prod(widths))
    else:
        volume = abs(float(np.linalg.det(box)))
        a, b, c = box
        widths = volume / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
                                    np.linalg.norm(np.cross(a, b))])
    side = (volume * _ATOMS_PER_CELL / n_atoms) ** (1.0 / 3.0)
    return tuple(int(max(1, round(w / side))) for w in widths)


def _clean_exclusions(exclusions, n_atoms: int) -> np.ndarray:
    """Each excluded partner once per row, no self pairs, padded with n_atoms (host).

    The build clears excluded bits by adding them, so a repeated entry must not reach it.
    """
    table = np.asarray(exclusions, dtype=np.int64).reshape(n_atoms, -1)
    if table.size == 0:
        return np.full((n_atoms, 1), n_atoms, np.int32)
    table = np.where((table < 0) | (table >= n_atoms) | (table == np.arange(n_atoms)[:, None]), n_atoms, table)
    table = np.sort(table, axis=1)
    table[:, 1:] = np.where(table[:, 1:] == table[:, :-1], n_atoms, table[:, 1:])
    table = np.sort(table, axis=1)
    width = max(int((table < n_atoms).sum(1).max()), 1)
    return table[:, :width].astype(np.int32)


def _host_pairs(positions: np.ndarray, box, list_cutoff: float) -> np.ndarray:
    """(P, 2) pairs i < j within ``list_cutoff`` [nm] under the minimum image (host, k-d tree)."""
    x = np.asarray(positions, np.float64)
    n_atoms = len(x)
    if box is None:
        return cKDTree(x).query_pairs(list_cutoff, output_type="ndarray")
    frac = x @ np.linalg.inv(box)
    frac -= np.floor(frac)
    if not np.any(box - np.diag(np.diag(box))):
        lengths = np.diag(box)
        wrapped = np.minimum(frac * lengths, np.nextafter(lengths, 0.0))  # the tree wants [0, L)
        return cKDTree(wrapped, boxsize=lengths).query_pairs(list_cutoff, output_type="ndarray")
    # triclinic: the atoms and those images of them that lie within list_cutoff of the cell
    a, b, c = box
    volume = abs(float(np.linalg.det(box)))
    widths = volume / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
                                np.linalg.norm(np.cross(a, b))])
    reach = list_cutoff / widths
    points, atoms = [], []
    for shift in itertools.product((0, -1, 1), repeat=3):
        f = frac + np.asarray(shift, np.float64)
        keep = np.all((f > -reach) & (f < 1.0 + reach), axis=1)
        points.append(f[keep] @ box)
        atoms.append(np.nonzero(keep)[0])
    atoms = np.concatenate(atoms)
    pairs = cKDTree(np.concatenate(points)).query_pairs(list_cutoff, output_type="ndarray")
    pairs = pairs[(pairs[:, 0] < n_atoms) | (pairs[:, 1] < n_atoms)]  # the first n points are the atoms
    i, j = atoms[pairs[:, 0]], atoms[pairs[:, 1]]
    key = np.unique(np.minimum(i, j) * n_atoms + np.maximum(i, j))
    return np.stack([key // n_atoms, key % n_atoms], axis=1)


def _host_rows(positions, box, list_cutoff: float, exclusions: np.ndarray):
    """CSR matrix whose row i holds the partners of atom i, excluded ones removed (host)."""
    n_atoms = len(positions)
    pairs = _host_pairs(positions, box, list_cutoff)
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    table = sparse.csr_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n_atoms, n_atoms))
    rows = np.repeat(np.arange(n_atoms), exclusions.shape[1])
    cols = exclusions.reshape(-1)
    real = cols < n_atoms
    excluded = sparse.csr_matrix((np.ones(int(real.sum()), np.int8), (rows[real], cols[real])),
                                 shape=(n_atoms, n_atoms))
    table = (table - table.multiply(excluded)).tocsr()
    table.eliminate_zeros()
    table.sort_indices()
    return table


def _padded_table(rows, capacity: int):
    """(N, capacity) int32 table from CSR rows, left-packed, padded with N (rows cut at capacity)."""
    n_atoms = rows.shape[0]
    counts = np.diff(rows.indptr)
    row = np.repeat(np.arange(n_atoms), counts)
    slot = np.arange(len(rows.indices)) - rows.indptr[row]
    fits = slot < capacity
    table = np.full((n_atoms, capacity), n_atoms, np.int32)
    table[row[fits], slot[fits]] = rows.indices[fits]
    return jnp.asarray(table)


def allocate_neighbors(positions, box, exclusions, cutoff: float, skin: float = 0.1, *, margin: float = 1.25,
                       capacity: int | None = None) -> Neighbors:
    """Size and build a neighbor table on the host.

    The cluster lists are measured by a small jitted function; the table itself
    comes from a k-d tree (scipy), so allocating compiles no build (the first
    jitted ``update_neighbors`` does). Rows hold ``ceil(margin * needed)``
    partners unless ``capacity`` is given.

    Args:
        positions: (N, 3) positions [nm].
        box: (3, 3) reduced box vectors [nm], or ``None``.
        exclusions: (N, E) excluded partners padded with N (``exclusion_table``).
        cutoff: interaction cutoff [nm].
        skin: extra list distance [nm]; the table is rebuilt when an atom moves
            more than skin / 2.
        margin: head-room factor on the measured row and cluster-list occupancy.
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
    n_atoms = positions.shape[0]
    jbox = None if box is None else jnp.asarray(box, positions.dtype)
    jpos = jnp.asarray(positions)
    jexcl = jnp.asarray(_clean_exclusions(exclusions, n_atoms))
    cells = _cells_for(positions, None if box is None else np.asarray(box, np.float64), n_atoms)
    grid, cell_capacity = None, 0
    if cells is not None:
        blocks, clusters, r_cluster, _, n_blocks = (float(v) for v in _sizes_jit(jpos, jbox, list_cutoff, cells))
        half_width = math.inf if box is None else 0.5 * float(np.min(np.diag(np.asarray(box))))
        # one image per cluster pair, with room for the clusters to grow a little
        if list_cutoff + 2.2 * r_cluster <= half_width:
            # capacities are rounded up so that similar systems share compiled builds (the
            # loops of a build stop at the fullest list, so the extra room costs little)
            block_capacity = _round_up(max(blocks * margin, 1), 16)
            if block_capacity >= 0.75 * n_blocks:
                block_capacity = int(n_blocks)  # the block level would cull little: skip it
            grid = cells + (block_capacity,)
            cell_capacity = _round_up(max(clusters * margin, 1), 32)
    if grid is None:
        cell_capacity = every_cluster_capacity(n_atoms)
    # the first table comes from a k-d tree on the host: no build has to be compiled here (the
    # caller's jitted update compiles one anyway), and it checks the jitted build independently
    rows = _host_rows(positions, None if box is None else np.asarray(box, np.float64), list_cutoff,
                      np.asarray(jexcl))
    need = int(np.diff(rows.indptr).max()) if n_atoms else 0
    if capacity is None:
        capacity = min(max(int(math.ceil(need * margin)), 1), max(n_atoms - 1, 1))
    idx = _padded_table(rows, int(capacity))
    overflow = jnp.asarray(need > capacity)
    need = jnp.asarray(need, jnp.int32)
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


def neighbors_moved(nbrs: Neighbors, positions, box=None):
    """Whether the table must be rebuilt: some atom moved more than skin / 2, or the box changed.

    Returns a bool scalar (jit-able; always False for dense tables).
    """
    if nbrs.dense:
        return jnp.zeros((), bool)
    dr = minimum_image(positions - nbrs.reference_positions, box)
    moved = jnp.max(jnp.sum(dr * dr, axis=-1)) > (0.5 * nbrs.skin) ** 2
    if box is not None:
        moved = moved | jnp.any(box != nbrs.reference_box)
    return moved


def rebuild_neighbors(nbrs: Neighbors, positions, box=None) -> Neighbors:
    """The table rebuilt at ``positions`` unconditionally (jit-able), ``needed``/``overflow`` updated.

    Batched callers use it to rebuild every member at once when any needs it
    (``update_neighbors`` under ``vmap`` would build every member every step).
    """
    if nbrs.dense:
        return nbrs
    idx, need, _, overflow = build_table(
        positions, box, nbrs.exclusions, list_cutoff=nbrs.cutoff + nbrs.skin, capacity=nbrs.capacity,
        grid=nbrs.grid, cell_capacity=nbrs.cell_capacity)
    new_box = nbrs.reference_box if box is None else box.astype(nbrs.reference_box.dtype)
    return dataclasses.replace(nbrs, idx=idx, reference_positions=positions.astype(nbrs.reference_positions.dtype),
                               reference_box=new_box, needed=jnp.maximum(nbrs.needed, need),
                               overflow=nbrs.overflow | overflow)


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
    return jax.lax.cond(neighbors_moved(nbrs, positions, box), lambda n: rebuild_neighbors(n, positions, box),
                        lambda n: n, nbrs)


def update_neighbor_tables(neighbors, positions, box=None):
    """``update_neighbors`` on one table or on every table of a pytree of them (jit-able).

    A summed potential carries a tuple of tables, one per part (None entries allowed);
    this refreshes each the same way. Dense tables and None come back as they are.

    Args:
        neighbors: a ``Neighbors``, a pytree of them, or None.
        positions: (N, 3) positions [nm].
        box: (3, 3) box [nm] or ``None``.
    """
    if neighbors is None:
        return None
    return jax.tree_util.tree_map(lambda t: update_neighbors(t, positions, box), neighbors, is_leaf=is_table)
