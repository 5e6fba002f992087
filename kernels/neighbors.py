"""Neighbor tables: for every atom, the partners within a cutoff plus a skin.

The table is a full (both directions) padded array ``idx`` of shape
(n_atoms, capacity): row i lists the atoms j != i with |r_ij| < cutoff + skin
that are not excluded from nonbonded interactions, left-packed and padded with
the value ``n_atoms``. Excluded pairs never enter the table, so nothing is
computed and then subtracted (which loses digits in float32 at bonded
distances). Row i belongs to atom i; within a row, partners come in spatial
order, which keeps the gathers of a nonbonded kernel local.

Building (``build_table``, jit-able, O(N) work) follows the cluster scheme of
GROMACS and OpenMM's GPU kernels, recast for dense XLA operations:

1. Atoms are sorted by grid cell, then by a Morton key inside the cell, and
   every cell is padded to a multiple of 8 slots, so groups of 8 consecutive
   slots ("clusters") are spatially compact and never straddle a cell or the
   periodic boundary. Atoms themselves are never reordered for the caller.
2. Cluster bounding boxes are tested against blocks of 8 clusters, then
   against the clusters of the near blocks, giving each i-cluster a sorted list
   of j-clusters (and the periodic image under which each is near).
3. For every atom, the distances to the 8 atoms of each listed j-cluster become
   one byte of a bit mask; excluded partners are cleared from the mask.
4. Masks are compacted into table slots without sorting: a prefix count of the
   set bits gives each 32-bit word its first slot, a scatter-max of the word
   index over its slot window tells every slot which word it comes from, and
   a select table finds the bit.

Systems with fewer than ``_MIN_CLUSTERED`` atoms, or periodic boxes too small
for one image per cluster pair, use every cluster as a candidate of every
other one, with the minimum image taken per atom pair (``grid=None``).

``update_neighbors`` is jit-able: it rebuilds only when some atom moved more
than half the skin (or the box changed), and sets ``overflow`` when a row or a
cluster list needed more room than allocated (or clusters grew too large for
the box); the caller then re-allocates on the host and repeats the work (see
``diffmd.simulate``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .errors import InputError
from .geometry import check_cutoff_fits, minimum_image

_CLUSTER = 8  # atoms per cluster: one byte of a pair mask
_BLOCK = 8  # clusters per block, the coarse level of the cluster search
_ROWS = 32  # i-clusters per loop step (256 table rows)
_ATOMS_PER_CELL = 64  # target occupancy of the sorting cells
_MIN_CLUSTERED = 512  # below this many atoms every cluster is a candidate
_FAR = 1.0e6  # [nm] position of empty clusters (always masked as well)


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


# ---------------------------------------------------------------------------------------------
# Bit-mask helpers
# ---------------------------------------------------------------------------------------------

def _select_table() -> np.ndarray:
    """(256 * 8,) position of the r-th set bit of a byte m at m * 8 + r."""
    table = np.zeros((256, 8), np.int32)
    for m in range(256):
        bits = [b for b in range(8) if m >> b & 1]
        table[m, : len(bits)] = bits
    return table.reshape(-1)


_SELECT = _select_table()


def _prefix_sum(counts):
    """Inclusive prefix sum of small non-negative int32 counts along the last axis.

    XLA:CPU lowers ``cumsum`` to a log-depth scan that costs several ns per
    element; products with triangular 0/1 matrices (blocks of 32, then the
    block totals recursively) are exact in float32 below 2**24 and much faster.
    """
    length = counts.shape[-1]
    lead = counts.shape[:-1]
    width = min(length, 32)
    blocks = -(-length // width)
    padded = jnp.pad(counts.astype(jnp.float32), [(0, 0)] * len(lead) + [(0, blocks * width - length)])
    tri = jnp.triu(jnp.ones((width, width), jnp.float32))
    within = jnp.matmul(padded.reshape(lead + (blocks, width)), tri, precision=lax.Precision.HIGHEST)
    if blocks > 1:
        totals = within[..., -1].astype(jnp.int32)
        before = (_prefix_sum(totals) - totals).astype(jnp.float32)
        within = within + before[..., None]
    return within.reshape(lead + (blocks * width,))[..., :length].astype(jnp.int32)


def _pack_words(flags):
    """(..., L) bool -> (..., ceil(L / 32)) int32 bit words (bit b of word w is flag 32 w + b)."""
    length = flags.shape[-1]
    words = -(-length // 32)
    flags = jnp.pad(flags, [(0, 0)] * (flags.ndim - 1) + [(0, words * 32 - length)])
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(32, dtype=jnp.int32))
    return jnp.sum(jnp.where(flags.reshape(flags.shape[:-1] + (words, 32)), bits, 0), axis=-1, dtype=jnp.int32)


def _compact(words, capacity: int):
    """Positions of the set bits of each row, left-packed.

    Args:
        words: (R, W) int32 bit words.
        capacity: output width (static).

    Returns:
        (elements (R, capacity) int32 bit numbers 32 w + b, or -1 past the
        row's count; counts (R,) int32 set bits per row, which may exceed
        ``capacity``).
    """
    n_rows, n_words = words.shape
    counts = lax.population_count(words)
    inclusive = _prefix_sum(counts)
    total = inclusive[:, -1]
    first = inclusive - counts
    # Every word writes its index over the 32 slots from its first slot on; the
    # largest index wins, which is the word that owns the slot (later words
    # start after the slot). The max makes the result independent of order.
    span = capacity + 32
    start = (jnp.arange(n_rows, dtype=jnp.int32)[:, None] * span + jnp.minimum(first, capacity)).reshape(-1, 1)
    updates = jnp.broadcast_to(jnp.arange(n_words, dtype=jnp.int32)[None, :, None], (n_rows, n_words, 32))
    numbers = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(),
                                          scatter_dims_to_operand_dims=(0,))
    owner = lax.scatter_max(jnp.full((n_rows * span,), -1, jnp.int32), start, updates.reshape(-1, 32), numbers,
                            indices_are_sorted=True, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    owner = jnp.maximum(owner.reshape(n_rows, span)[:, :capacity], 0)
    word = jnp.take_along_axis(words, owner, axis=1)
    slot = jnp.arange(capacity, dtype=jnp.int32)[None, :]
    rank = slot - jnp.take_along_axis(first, owner, axis=1)
    # which byte of the word holds the rank-th set bit, then the bit inside it
    c1 = lax.population_count(word & 255)
    c2 = c1 + lax.population_count((word >> 8) & 255)
    c3 = c2 + lax.population_count((word >> 16) & 255)
    byte = (rank >= c1).astype(jnp.int32) + (rank >= c2) + (rank >= c3)
    below = jnp.where(byte == 0, 0, jnp.where(byte == 1, c1, jnp.where(byte == 2, c2, c3)))
    value = (word >> (8 * byte)) & 255
    bit = jnp.asarray(_SELECT)[value * 8 + jnp.clip(rank - below, 0, 7)] + 8 * byte
    return jnp.where(slot < total[:, None], owner * 32 + bit, -1), total


def _count_below(sorted_rows, targets):
    """Per row, how many entries of ``sorted_rows`` (R, L) are < each target (R, T)."""
    length = sorted_rows.shape[1]
    pos = jnp.zeros(targets.shape, jnp.int32)
    step = 1 << max(int(length).bit_length() - 1, 0)
    while step:
        trial = pos + step
        value = jnp.take_along_axis(sorted_rows, jnp.minimum(trial, length) - 1, axis=1)
        pos = jnp.where((trial <= length) & (value < targets), trial, pos)
        step >>= 1
    return pos


# ---------------------------------------------------------------------------------------------
# Spatial layout: cells, Morton order inside cells, clusters of 8 slots
# ---------------------------------------------------------------------------------------------

def _spread_bits(v):
    """Spread the low 10 bits of v so that two zero bits follow each (Morton interleave)."""
    v = v & 0x3FF
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def _minimum_image_xyz(d, box):
    """``minimum_image`` on separate x, y, z arrays (XLA vectorises these; (..., 3) it does not)."""
    d = list(d)
    for axis in (2, 1, 0):
        shift = jnp.round(d[axis] / box[axis, axis])
        d = [d[k] - shift * box[axis, k] if k <= axis else d[k] for k in range(3)]
    return d


def _n_slots(n_atoms: int, cells: int) -> int:
    """Slots of the padded layout: every cell rounds up to whole clusters, whole loop steps."""
    per_step = _CLUSTER * _ROWS
    return max(-(-(n_atoms + (_CLUSTER - 1) * cells) // per_step) * per_step, per_step)


def _layout(positions, box, cells: tuple):
    """Sort atoms by (cell, Morton key inside the cell) and pad cells to whole clusters.

    Returns:
        wrapped: (N, 3) positions wrapped into the box [nm] (unchanged without one).
        atom_of_slot: (S,) atom in each slot of the padded order, N for padding.
        slot_of_atom: (N,) slot of each atom.
    """
    n_atoms = positions.shape[0]
    dtype = positions.dtype
    if box is not None:
        frac = positions @ jnp.linalg.inv(box)
        frac = frac - jnp.floor(frac)
        wrapped = frac @ box
    else:
        low = jnp.min(positions, axis=0)
        frac = (positions - low) / jnp.maximum(jnp.max(positions, axis=0) - low, 1e-3)
        wrapped = positions
    n_cells = cells[0] * cells[1] * cells[2]
    scaled = frac * jnp.asarray(cells, dtype)
    corner = jnp.clip(jnp.floor(scaled), 0, jnp.asarray(cells, dtype) - 1)
    ci = corner.astype(jnp.int32)
    # boustrophedon cell order: consecutive cells share a face, so a block of clusters that spans
    # two cells stays compact
    cy = jnp.where(ci[:, 0] % 2 == 1, cells[1] - 1 - ci[:, 1], ci[:, 1])
    column = ci[:, 0] * cells[1] + cy
    cz = jnp.where(column % 2 == 1, cells[2] - 1 - ci[:, 2], ci[:, 2])
    cell = column * cells[2] + cz
    fine = min(10, (30 - max(n_cells - 1, 1).bit_length()) // 3)
    q = jnp.clip(jnp.floor((scaled - corner) * (1 << fine)), 0, (1 << fine) - 1).astype(jnp.int32)
    key = (cell << (3 * fine)) | (_spread_bits(q[:, 0]) << 2) | (_spread_bits(q[:, 1]) << 1) | _spread_bits(q[:, 2])
    order = jnp.argsort(key).astype(jnp.int32)
    counts = jnp.zeros((n_cells,), jnp.int32).at[cell].add(1)
    padded = (counts + _CLUSTER - 1) // _CLUSTER * _CLUSTER
    sorted_cell = cell[order]
    rank = jnp.arange(n_atoms, dtype=jnp.int32) - (jnp.cumsum(counts) - counts)[sorted_cell]
    slot = (jnp.cumsum(padded) - padded)[sorted_cell] + rank
    n_slots = _n_slots(n_atoms, n_cells)
    atom_of_slot = jnp.full((n_slots,), n_atoms, jnp.int32).at[slot].set(order, unique_indices=True)
    slot_of_atom = jnp.zeros((n_atoms,), jnp.int32).at[order].set(slot, unique_indices=True)
    return wrapped, atom_of_slot, slot_of_atom


def _boxes(low, high, valid):
    """Centres and half-widths of bounding boxes, lists over x, y, z; invalid ones far away."""
    centre = [jnp.where(valid, 0.5 * (lo + hi), _FAR) for lo, hi in zip(low, high)]
    half = [jnp.where(valid, 0.5 * (hi - lo), 0.0) for lo, hi in zip(low, high)]
    return centre, half


def _gap2(ci, hi, cj, hj, box):
    """Squared distance between boxes (ci, hi) and (cj, hj) at the minimum image of their centres."""
    d = [b - a for a, b in zip(ci, cj)]
    if box is not None:
        d = _minimum_image_xyz(d, box)
    total = 0.0
    for k in range(3):
        gap = jnp.maximum(jnp.abs(d[k]) - (hi[k] + hj[k]), 0.0)
        total = total + gap * gap
    return total


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------

def _clusters(positions, box, cells: tuple):
    """Cluster layout and geometry shared by the build and the host-side sizing."""
    n_atoms = positions.shape[0]
    wrapped, atom_of_slot, slot_of_atom = _layout(positions, box, cells)
    n_clusters = atom_of_slot.shape[0] // _CLUSTER
    slots = atom_of_slot.reshape(n_clusters, _CLUSTER)
    real = slots < n_atoms
    # padding slots copy their cluster's first atom (bounding boxes stay tight; masks drop them);
    # a dummy block of empty clusters at the end stands for "no cluster"
    source = jnp.where(real, slots, slots[:, :1])
    padded = jnp.concatenate([wrapped, jnp.full((1, 3), _FAR, positions.dtype)])
    far = jnp.full((_BLOCK, _CLUSTER), _FAR, positions.dtype)
    xyz = [jnp.concatenate([padded[:, k][source], far]) for k in range(3)]
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(_CLUSTER, dtype=jnp.int32))
    valid8 = jnp.concatenate([jnp.sum(jnp.where(real, bits, 0), axis=1, dtype=jnp.int32),
                              jnp.zeros((_BLOCK,), jnp.int32)])
    valid = valid8 > 0
    centre, half = _boxes([jnp.min(x, axis=1) for x in xyz], [jnp.max(x, axis=1) for x in xyz], valid)
    n_blocks = n_clusters // _BLOCK
    block_valid = jnp.any(valid[:n_clusters].reshape(n_blocks, _BLOCK), axis=1)
    low = [jnp.min(jnp.where(valid, c - h, jnp.inf)[:n_clusters].reshape(n_blocks, _BLOCK), axis=1)
           for c, h in zip(centre, half)]
    high = [jnp.max(jnp.where(valid, c + h, -jnp.inf)[:n_clusters].reshape(n_blocks, _BLOCK), axis=1)
            for c, h in zip(centre, half)]
    block_centre, block_half = _boxes(low, high, block_valid)
    def radius(h, ok):
        return jnp.max(jnp.where(ok, jnp.sqrt(h[0] ** 2 + h[1] ** 2 + h[2] ** 2), 0.0))

    radii = (radius(half, valid), radius(block_half, block_valid))
    return dict(atom_of_slot=atom_of_slot, slot_of_atom=slot_of_atom, xyz=xyz, valid8=valid8, valid=valid,
                centre=centre, half=half, block_centre=block_centre, block_half=block_half,
                block_valid=block_valid, radii=radii, n_clusters=n_clusters, n_blocks=n_blocks)


def _near_blocks(c, ci, hi, box, list_cutoff):
    """(rows, n_blocks) blocks that may hold a partner of the clusters (ci, hi).

    A block whose centre may be nearer under another image than the minimum one
    (rc + R_i + R_block > w/2, e.g. one spanning two cells at the box edge) is
    always kept; its clusters are then tested one by one.
    """
    near = _gap2([x[:, None] for x in ci], [h[:, None] for h in hi], [x[None, :] for x in c["block_centre"]],
                 [h[None, :] for h in c["block_half"]], box) < list_cutoff * list_cutoff
    if box is not None:
        h = c["block_half"]
        big = list_cutoff + c["radii"][0] + jnp.sqrt(h[0] ** 2 + h[1] ** 2 + h[2] ** 2) > 0.5 * jnp.min(
            jnp.diagonal(box))
        near = near | big[None, :]
    return near & c["block_valid"][None, :]


def _build(positions, box, exclusions, list_cutoff: float, capacity: int, grid, cell_capacity: int,
           count_only: bool = False):
    """The jit-able build. Returns a dict: idx (or counts), row_need, cluster_need, block_need, fits."""
    n_atoms = positions.shape[0]
    clustered = grid is not None
    c = _clusters(positions, box, tuple(grid[:3]) if clustered else (1, 1, 1))
    n_clusters, n_blocks = c["n_clusters"], c["n_blocks"]
    xyz, centre, half, valid8 = c["xyz"], c["centre"], c["half"], c["valid8"]
    rc2 = list_cutoff * list_cutoff
    fits = jnp.asarray(True)
    if clustered:
        list_width = -(-cell_capacity // 4) * 4
        use_blocks = grid[3] < n_blocks
        block_width = -(-grid[3] // 4) * 4
        if box is not None:
            # One image per pair: a pair within the list cutoff has its cluster (block) centres
            # within rc + R_i + R_j; when that is below w/2 the image is unique and minimum_image
            # finds it exactly, so testing boxes at their centres' minimum image misses nothing.
            fits = list_cutoff + 2.0 * c["radii"][0] <= 0.5 * jnp.min(jnp.diagonal(box))
        every_cluster = jnp.arange(n_clusters, dtype=jnp.int32)
    else:
        list_width = -(-n_clusters // 4) * 4
        every_cluster = jnp.concatenate([jnp.arange(n_clusters, dtype=jnp.int32),
                                         jnp.full((list_width - n_clusters,), n_clusters, jnp.int32)])
    atoms = jnp.concatenate([c["atom_of_slot"], jnp.full((_BLOCK * _CLUSTER,), n_atoms, jnp.int32)])
    atoms = atoms.reshape(-1, _CLUSTER)
    excl_slot = jnp.concatenate([c["slot_of_atom"], jnp.full((1,), -1, jnp.int32)])[exclusions]
    excl_slot = jnp.concatenate([excl_slot, jnp.full((1, exclusions.shape[1]), -1, jnp.int32)])
    excl_slot = excl_slot[c["atom_of_slot"]].reshape(n_clusters, _CLUSTER, -1)
    bits8 = jnp.left_shift(jnp.int32(1), jnp.arange(_CLUSTER, dtype=jnp.int32))
    rows = _ROWS * _CLUSTER
    n_words = list_width // 4

    def step(first):
        ic = first + jnp.arange(_ROWS, dtype=jnp.int32)
        ci = [x[ic] for x in centre]
        hi = [h[ic] for h in half]
        zero = jnp.zeros((), jnp.int32)
        if clustered:
            if use_blocks:
                # i-cluster against every block, then against the clusters of the near blocks
                near = _near_blocks(c, ci, hi, box, list_cutoff)
                found, block_count = _compact(_pack_words(near), block_width)
                blocks = jnp.where(found >= 0, found, n_blocks)
                cand = (blocks[:, :, None] * _BLOCK + jnp.arange(_BLOCK, dtype=jnp.int32)).reshape(_ROWS, -1)
                block_need = jnp.max(block_count)
            else:
                cand = jnp.broadcast_to(every_cluster, (_ROWS, n_clusters))
                block_need = zero
            near = _gap2([x[:, None] for x in ci], [h[:, None] for h in hi], [x[cand] for x in centre],
                         [h[cand] for h in half], box) < rc2
            near = near & c["valid"][cand]
            found, cluster_count = _compact(_pack_words(near), list_width)
            jl = jnp.where(found >= 0, jnp.take_along_axis(cand, jnp.maximum(found, 0), axis=1), n_clusters)
            cluster_need = jnp.max(cluster_count)
        else:
            jl = jnp.broadcast_to(every_cluster, (_ROWS, list_width))
            block_need = cluster_need = zero
        # atom pairs: distances to the 8 atoms of each listed cluster, as one byte per cluster
        if clustered and box is not None:
            # the image under which the cluster centres are nearest is every near pair's image
            dc = [x[jl] - y[:, None] for x, y in zip(centre, ci)]
            shift = [a - b for a, b in zip(_minimum_image_xyz(dc, box), dc)]
            xj = [x[jl] + s[:, :, None] for x, s in zip(xyz, shift)]
        else:
            xj = [x[jl] for x in xyz]
        d = [a[:, None, :, :] - x[ic][:, :, None, None] for a, x in zip(xj, xyz)]
        if not clustered and box is not None:
            d = _minimum_image_xyz(d, box)
        inside = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < rc2
        mask = jnp.sum(jnp.where(inside, bits8, 0), axis=-1, dtype=jnp.int32)  # (_ROWS, 8, list_width)
        self_bit = jnp.where(jl[:, None, :] == ic[:, None, None], bits8[None, :, None], 0)
        mask = mask & (valid8[jl][:, None, :] & ~self_bit)
        shifts = jnp.asarray([0, 8, 16, 24], jnp.int32)
        words = jnp.sum(mask.reshape(_ROWS, _CLUSTER, n_words, 4) << shifts, axis=-1, dtype=jnp.int32)
        words = words.reshape(rows, n_words)
        # excluded partners: find their cluster in the (sorted) list, clear their bit
        ex = excl_slot[ic]  # (_ROWS, 8, E)
        target = jnp.where(ex >= 0, ex >> 3, n_clusters + 1).reshape(_ROWS, -1)
        pos = _count_below(jl, target)
        hit = (jnp.take_along_axis(jl, jnp.minimum(pos, list_width - 1), axis=1) == target).reshape(rows, -1)
        pos = pos.reshape(rows, -1)
        ex = ex.reshape(rows, -1)
        flat = jnp.where(hit, jnp.arange(rows, dtype=jnp.int32)[:, None] * n_words + (pos >> 2), rows * n_words)
        clear = jnp.zeros((rows * n_words + 1,), jnp.int32).at[flat.reshape(-1)].add(
            jnp.left_shift(jnp.int32(1), (pos & 3) * 8 + (ex & 7)).reshape(-1))
        words = words & ~clear[:-1].reshape(rows, n_words)
        real = atoms[ic].reshape(rows) < n_atoms
        if count_only:
            count = jnp.sum(lax.population_count(words), axis=1, dtype=jnp.int32)
            return count, jnp.where(real, count, 0), cluster_need, block_need
        found, count = _compact(words, capacity)
        ids = atoms[jl].reshape(-1)  # atom of every candidate slot, per i-cluster
        src = (jnp.arange(rows, dtype=jnp.int32) // _CLUSTER)[:, None] * (list_width * _CLUSTER)
        out = jnp.where(found >= 0, ids[src + jnp.maximum(found, 0)], n_atoms)
        return out, jnp.where(real, count, 0), cluster_need, block_need

    firsts = jnp.arange(n_clusters // _ROWS, dtype=jnp.int32) * _ROWS
    out, count, cluster_need, block_need = lax.map(step, firsts)
    result = dict(row_need=jnp.max(count), cluster_need=jnp.max(cluster_need), block_need=jnp.max(block_need),
                  fits=fits)
    if count_only:
        result["counts"] = out.reshape(-1)[c["slot_of_atom"]]
    else:
        result["idx"] = out.reshape(-1, capacity)[c["slot_of_atom"]]
    return result


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
    r = _build(positions, box, exclusions, float(list_cutoff), int(capacity), grid, int(cell_capacity))
    overflow = (r["row_need"] > capacity) | ~r["fits"]
    if grid is not None:
        overflow = overflow | (r["cluster_need"] > cell_capacity) | (r["block_need"] > grid[3])
    return r["idx"], r["row_need"].astype(jnp.int32), r["cluster_need"].astype(jnp.int32), overflow


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _build_jit(positions, box, exclusions, list_cutoff, capacity, grid, cell_capacity):
    return build_table(positions, box, exclusions, list_cutoff=list_cutoff, capacity=capacity, grid=grid,
                       cell_capacity=cell_capacity)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sizes_jit(positions, box, list_cutoff, cells):
    """Host sizing: (blocks, clusters) near one cluster at most, and the cluster/block radii [nm]."""
    c = _clusters(positions, box, cells)
    n_clusters, n_blocks = c["n_clusters"], c["n_blocks"]
    rc2 = list_cutoff * list_cutoff

    def step(first):
        ic = first + jnp.arange(_ROWS, dtype=jnp.int32)
        ci = [x[ic][:, None] for x in c["centre"]]
        hi = [h[ic][:, None] for h in c["half"]]
        blocks = _near_blocks(c, [x[:, 0] for x in ci], [h[:, 0] for h in hi], box, list_cutoff)
        clusters = _gap2(ci, hi, [x[None, :n_clusters] for x in c["centre"]],
                         [h[None, :n_clusters] for h in c["half"]], box) < rc2
        blocks = jnp.sum(blocks, axis=1, dtype=jnp.int32)
        clusters = jnp.sum(clusters & c["valid"][None, :n_clusters], axis=1, dtype=jnp.int32)
        return jnp.max(blocks), jnp.max(clusters)

    blocks, clusters = lax.map(step, jnp.arange(n_clusters // _ROWS, dtype=jnp.int32) * _ROWS)
    return jnp.max(blocks), jnp.max(clusters), c["radii"][0], c["radii"][1], n_blocks


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
            block_capacity = max(int(math.ceil(blocks * margin)), 1)
            if block_capacity >= 0.75 * n_blocks:
                block_capacity = int(n_blocks)  # the block level would cull little: skip it
            grid = cells + (block_capacity,)
        if grid is not None:
            cell_capacity = max(int(math.ceil(clusters * margin)), 1)
    if grid is None:
        cell_capacity = _n_slots(n_atoms, 1) // _CLUSTER
    if capacity is None:
        # a first build with generous room measures the rows; the table is left-packed, so
        # its first columns are the table at the final capacity
        guess = min(max(int(math.ceil(_CLUSTER * cell_capacity * 0.35)), 8), max(n_atoms - 1, 1))
        idx, need, _, _ = _build_jit(jpos, jbox, jexcl, list_cutoff, guess, grid, cell_capacity)
        capacity = min(max(int(math.ceil(int(need) * margin)), 1), max(n_atoms - 1, 1))
        if capacity > guess:
            idx, need, _, overflow = _build_jit(jpos, jbox, jexcl, list_cutoff, capacity, grid, cell_capacity)
        else:
            idx, overflow = idx[:, :capacity], jnp.asarray(False)
    else:
        idx, need, _, overflow = _build_jit(jpos, jbox, jexcl, list_cutoff, int(capacity), grid, cell_capacity)
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
        idx, need, _, overflow = build_table(
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
