"""The cluster search behind ``neighbors.build_table`` (private; array math only).

See ``neighbors`` for the scheme. Atoms are laid out in slots sorted by cell and
along a Hilbert curve, 8 slots to a cluster and 8 clusters to a block; every
row's partners are found as bits of 32-bit words (one byte per j-cluster) and
packed into table slots without sorting.

XLA:CPU runs each small operation of a loop body with a fixed overhead, and
reductions along long minor axes, ``cumsum`` and scatters cost several ns per
element; the formulations below (bytes packed along a minor axis of 8,
triangular-matmul prefix sums, one scatter-max per 32-bit word, loops whose
trip count follows the fullest row of each step) were chosen by timing them
against the alternatives on DHFR (23,558 atoms).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .errors import InputError

CLUSTER = 8  # atoms per cluster: one byte of a pair mask
BLOCK = 8  # clusters per block, the coarse level of the cluster search
ROWS = 32  # i-clusters per loop step (256 table rows)
FAR = 1.0e6  # [nm] position of empty clusters (always masked as well)
PAIRS_PER_PASS = 32  # j-clusters per pass of the pair-distance loop
SLOTS_PER_PASS = 64  # table slots per pass of the output loop
EXCLUSIONS_PER_PASS = 4  # excluded partners per row and pass


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


def prefix_sum(counts):
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
        before = (prefix_sum(totals) - totals).astype(jnp.float32)
        within = within + before[..., None]
    return within.reshape(lead + (blocks * width,))[..., :length].astype(jnp.int32)


def pack_words(flags):
    """(..., L) bool -> (..., ceil(L / 32)) int32 bit words (bit b of word w is flag 32 w + b)."""
    length = flags.shape[-1]
    words = -(-length // 32)
    flags = jnp.pad(flags, [(0, 0)] * (flags.ndim - 1) + [(0, words * 32 - length)])
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(32, dtype=jnp.int32))
    bits = bits.reshape((1,) * (flags.ndim - 1) + (1, 32))
    return jnp.sum(jnp.where(flags.reshape(flags.shape[:-1] + (words, 32)), bits, 0), axis=-1, dtype=jnp.int32)


def _owners(words, capacity: int):
    """For every output slot, the word its bit comes from and that word's first slot.

    Args:
        words: (R, W) int32 bit words.
        capacity: output width (static).

    Returns:
        (owner (R, capacity) int32 packing ``word << shift | first slot``, shift,
        counts (R,) int32 set bits per row, which may exceed ``capacity``).
    """
    n_rows, n_words = words.shape
    counts = lax.population_count(words)
    inclusive = prefix_sum(counts)
    first = jnp.minimum(inclusive - counts, capacity)
    span = capacity + 32
    shift = max(int(span).bit_length(), 1)
    if n_words >= 2 ** (31 - shift):
        raise InputError(f"neighbor list too wide to build ({n_words} words x {capacity} slots)")
    # Every word writes (its index, its first slot) over the 32 slots from its first slot on;
    # the largest index wins, which is the word that owns the slot (later words start after
    # it). A max does not depend on the order of the writes, so this is exact on any backend.
    start = (jnp.arange(n_rows, dtype=jnp.int32)[:, None] * span + first).reshape(-1, 1)
    value = (jnp.arange(n_words, dtype=jnp.int32)[None, :] << shift) | first
    updates = jnp.broadcast_to(value[:, :, None], (n_rows, n_words, 32)).reshape(-1, 32)
    numbers = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(),
                                          scatter_dims_to_operand_dims=(0,))
    owner = lax.scatter_max(jnp.full((n_rows * span,), -1, jnp.int32), start, updates, numbers,
                            indices_are_sorted=True, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return jnp.maximum(owner.reshape(n_rows, span)[:, :capacity], 0), shift, inclusive[:, -1]


def _bits_at(words, owner, shift: int, slots, total):
    """Bit numbers (32 word + bit) filling table ``slots`` (1, C), -1 past each row's count."""
    rank = slots - (owner & ((1 << shift) - 1))
    index = owner >> shift
    word = jnp.take_along_axis(words, index, axis=1)
    # which byte of the word holds the rank-th set bit, then the bit inside it
    c1 = lax.population_count(word & 255)
    c2 = c1 + lax.population_count((word >> 8) & 255)
    c3 = c2 + lax.population_count((word >> 16) & 255)
    byte = (rank >= c1).astype(jnp.int32) + (rank >= c2) + (rank >= c3)
    below = jnp.where(byte == 0, 0, jnp.where(byte == 1, c1, jnp.where(byte == 2, c2, c3)))
    value = (word >> (8 * byte)) & 255
    bit = jnp.asarray(_SELECT)[value * 8 + jnp.clip(rank - below, 0, 7)] + 8 * byte
    return jnp.where(slots < total[:, None], index * 32 + bit, -1)


def compact(words, capacity: int):
    """Positions of the set bits of each row, left-packed.

    Args:
        words: (R, W) int32 bit words.
        capacity: output width (static).

    Returns:
        (elements (R, capacity) int32 bit numbers 32 w + b, or -1 past the
        row's count; counts (R,) int32 set bits per row, which may exceed
        ``capacity``).
    """
    owner, shift, total = _owners(words, capacity)
    return _bits_at(words, owner, shift, jnp.arange(capacity, dtype=jnp.int32)[None, :], total), total


def count_below(sorted_rows, targets):
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
# Spatial layout: cells, Hilbert order inside cells, clusters of 8 slots
# ---------------------------------------------------------------------------------------------

def _spread_bits(v):
    """Spread the low 10 bits of v so that two zero bits follow each (Morton interleave)."""
    v = v & 0x3FF
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def _hilbert_key(q, bits: int):
    """Hilbert-curve index of integer points q (N, 3) on a 2**bits grid (Skilling's transpose method).

    Unlike a Morton key the curve never jumps, so 8 consecutive atoms along it stay
    close together: clusters are compact, without the outliers that straddle Morton jumps.
    """
    x = [q[:, 0], q[:, 1], q[:, 2]]
    level = 1 << (bits - 1)
    while level > 1:
        low = level - 1
        for i in range(3):
            hit = (x[i] & level) != 0
            swap = (x[0] ^ x[i]) & low
            x0 = jnp.where(hit, x[0] ^ low, x[0] ^ swap)
            if i:
                x[i] = jnp.where(hit, x[i], x[i] ^ swap)
            x[0] = x0
        level >>= 1
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    flip = jnp.zeros_like(x[0])
    level = 1 << (bits - 1)
    while level > 1:
        flip = jnp.where((x[2] & level) != 0, flip ^ (level - 1), flip)
        level >>= 1
    x = [v ^ flip for v in x]
    return (_spread_bits(x[0]) << 2) | (_spread_bits(x[1]) << 1) | _spread_bits(x[2])


def _minimum_image_xyz(d, box):
    """``minimum_image`` on separate x, y, z arrays (XLA vectorises these; (..., 3) it does not)."""
    d = list(d)
    for axis in (2, 1, 0):
        shift = jnp.round(d[axis] / box[axis, axis])
        d = [d[k] - shift * box[axis, k] if k <= axis else d[k] for k in range(3)]
    return d


def n_slots(n_atoms: int, cells: int) -> int:
    """Slots of the padded layout: every cell rounds up to whole clusters, whole loop steps."""
    per_step = CLUSTER * ROWS
    return max(-(-(n_atoms + (CLUSTER - 1) * cells) // per_step) * per_step, per_step)


def layout(positions, box, cells: tuple):
    """Sort atoms by (cell, Hilbert key inside the cell) and pad cells to whole clusters.

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
        frac = (positions - low[None, :]) / jnp.maximum(jnp.max(positions, axis=0) - low, 1e-3)[None, :]
        wrapped = positions
    n_cells = cells[0] * cells[1] * cells[2]
    scaled = frac * jnp.asarray(cells, dtype)[None, :]
    corner = jnp.clip(jnp.floor(scaled), 0, jnp.asarray(cells, dtype)[None, :] - 1)
    ci = corner.astype(jnp.int32)
    # boustrophedon cell order: consecutive cells share a face, so a block of clusters that spans
    # two cells stays compact
    cy = jnp.where(ci[:, 0] % 2 == 1, cells[1] - 1 - ci[:, 1], ci[:, 1])
    column = ci[:, 0] * cells[1] + cy
    cz = jnp.where(column % 2 == 1, cells[2] - 1 - ci[:, 2], ci[:, 2])
    cell = column * cells[2] + cz
    fine = min(10, (30 - max(n_cells - 1, 1).bit_length()) // 3)
    q = jnp.clip(jnp.floor((scaled - corner) * (1 << fine)), 0, (1 << fine) - 1).astype(jnp.int32)
    key = (cell << (3 * fine)) | _hilbert_key(q, fine)
    order = jnp.argsort(key).astype(jnp.int32)
    counts = jnp.zeros((n_cells,), jnp.int32).at[cell].add(1)
    padded = (counts + CLUSTER - 1) // CLUSTER * CLUSTER
    sorted_cell = cell[order]
    rank = jnp.arange(n_atoms, dtype=jnp.int32) - (jnp.cumsum(counts) - counts)[sorted_cell]
    slot = (jnp.cumsum(padded) - padded)[sorted_cell] + rank
    size = n_slots(n_atoms, n_cells)
    atom_of_slot = jnp.full((size,), n_atoms, jnp.int32).at[slot].set(order, unique_indices=True)
    slot_of_atom = jnp.zeros((n_atoms,), jnp.int32).at[order].set(slot, unique_indices=True)
    return wrapped, atom_of_slot, slot_of_atom


def _boxes(low, high, valid):
    """Centres and half-widths of bounding boxes, lists over x, y, z; invalid ones far away."""
    centre = [jnp.where(valid, 0.5 * (lo + hi), FAR) for lo, hi in zip(low, high)]
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

def _max_radius(half, valid):
    """Largest half-diagonal [nm] of the valid boxes."""
    return jnp.max(jnp.where(valid, jnp.sqrt(half[0] ** 2 + half[1] ** 2 + half[2] ** 2), 0.0))


def cluster_geometry(positions, box, cells: tuple):
    """Cluster layout and geometry shared by the build and the host-side sizing."""
    n_atoms = positions.shape[0]
    wrapped, atom_of_slot, slot_of_atom = layout(positions, box, cells)
    n_clusters = atom_of_slot.shape[0] // CLUSTER
    slots = atom_of_slot.reshape(n_clusters, CLUSTER)
    real = slots < n_atoms
    # padding slots copy their cluster's first atom (bounding boxes stay tight; masks drop them);
    # a dummy block of empty clusters at the end stands for "no cluster"
    source = jnp.where(real, slots, slots[:, :1])
    padded = jnp.concatenate([wrapped, jnp.full((1, 3), FAR, positions.dtype)])
    far = jnp.full((BLOCK, CLUSTER), FAR, positions.dtype)
    xyz = [jnp.concatenate([padded[:, k][source], far]) for k in range(3)]
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(CLUSTER, dtype=jnp.int32))
    valid8 = jnp.concatenate([jnp.sum(jnp.where(real, bits[None, :], 0), axis=1, dtype=jnp.int32),
                              jnp.zeros((BLOCK,), jnp.int32)])
    valid = valid8 > 0
    centre, half = _boxes([jnp.min(x, axis=1) for x in xyz], [jnp.max(x, axis=1) for x in xyz], valid)
    n_blocks = n_clusters // BLOCK
    block_valid = jnp.any(valid[:n_clusters].reshape(n_blocks, BLOCK), axis=1)
    low = [jnp.min(jnp.where(valid, c - h, jnp.inf)[:n_clusters].reshape(n_blocks, BLOCK), axis=1)
           for c, h in zip(centre, half)]
    high = [jnp.max(jnp.where(valid, c + h, -jnp.inf)[:n_clusters].reshape(n_blocks, BLOCK), axis=1)
            for c, h in zip(centre, half)]
    block_centre, block_half = _boxes(low, high, block_valid)
    radii = (_max_radius(half, valid), _max_radius(block_half, block_valid))
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


def build(positions, box, exclusions, list_cutoff: float, capacity: int, grid, cell_capacity: int):
    """The jit-able build: a dict of idx, row_need, cluster_need, block_need and fits (see build_table)."""
    n_atoms = positions.shape[0]
    clustered = grid is not None
    c = cluster_geometry(positions, box, tuple(grid[:3]) if clustered else (1, 1, 1))
    n_clusters, n_blocks = c["n_clusters"], c["n_blocks"]
    xyz, centre, half, valid8 = c["xyz"], c["centre"], c["half"], c["valid8"]
    rc2 = list_cutoff * list_cutoff
    fits = jnp.asarray(True)
    if clustered:
        list_width = -(-cell_capacity // 4) * 4
        use_blocks = grid[3] < n_blocks
        block_width = -(-grid[3] // 4) * 4
        if box is not None:
            # One image per pair: a pair within the list cutoff has its cluster centres within
            # rc + R_i + R_j; below w/2 that image is unique and minimum_image finds it exactly,
            # so the boxes tested at their centres' minimum image (and the shift below) miss nothing.
            fits = list_cutoff + 2.0 * c["radii"][0] <= 0.5 * jnp.min(jnp.diagonal(box))
        every_cluster = jnp.arange(n_clusters, dtype=jnp.int32)
    else:
        list_width = -(-n_clusters // 4) * 4
        every_cluster = jnp.concatenate([jnp.arange(n_clusters, dtype=jnp.int32),
                                         jnp.full((list_width - n_clusters,), n_clusters, jnp.int32)])
    atoms = jnp.concatenate([c["atom_of_slot"], jnp.full((BLOCK * CLUSTER,), n_atoms, jnp.int32)])
    atoms = atoms.reshape(-1, CLUSTER)
    excl_slot = jnp.concatenate([c["slot_of_atom"], jnp.full((1,), -1, jnp.int32)])[exclusions]
    excl_slot = jnp.concatenate([excl_slot, jnp.full((1, exclusions.shape[1]), -1, jnp.int32)])
    excl_slot = excl_slot[c["atom_of_slot"]].reshape(n_clusters, CLUSTER, -1)
    # whole passes of columns (a clamped slice would repeat a partner and add its bit twice)
    width = -(-excl_slot.shape[2] // EXCLUSIONS_PER_PASS) * EXCLUSIONS_PER_PASS
    excl_slot = jnp.pad(excl_slot, ((0, 0), (0, 0), (0, width - excl_slot.shape[2])), constant_values=-1)
    bits8 = jnp.left_shift(jnp.int32(1), jnp.arange(CLUSTER, dtype=jnp.int32))
    rows = ROWS * CLUSTER
    n_words = list_width // 4

    def cluster_lists(ic, ci, hi):
        """(ROWS, list_width) sorted j-clusters near each i-cluster (padded with n_clusters)."""
        if not clustered:
            return jnp.broadcast_to(every_cluster, (ROWS, list_width)), jnp.int32(list_width), 0, 0
        if use_blocks:
            # i-cluster against every block, then against the clusters of the near blocks
            near = _near_blocks(c, ci, hi, box, list_cutoff) & c["valid"][ic][:, None]
            found, block_count = compact(pack_words(near), block_width)
            blocks = jnp.where(found >= 0, found, n_blocks)
            cand = blocks[:, :, None] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)[None, None, :]
            cand = cand.reshape(ROWS, -1)
        else:
            cand, block_count = jnp.broadcast_to(every_cluster, (ROWS, n_clusters)), jnp.zeros((), jnp.int32)
        near = _gap2([x[:, None] for x in ci], [h[:, None] for h in hi], [x[cand] for x in centre],
                     [h[cand] for h in half], box) < rc2
        # empty i-clusters (the tail of the layout) list nothing: their far-away centre has no meaning
        found, count = compact(pack_words(near & c["valid"][cand] & c["valid"][ic][:, None]), list_width)
        jl = jnp.where(found >= 0, jnp.take_along_axis(cand, jnp.maximum(found, 0), axis=1), n_clusters)
        return jl, jnp.minimum(jnp.max(count), list_width), jnp.max(count), jnp.max(block_count)

    def pair_words(ic, ci, jl, n_listed):
        """(rows, n_words) bit words: byte k of a row's words is its atom's partners in jl[k]."""
        xi = [x[ic][:, :, None, None] for x in xyz]
        width = min(PAIRS_PER_PASS, list_width)

        def one_pass(p, words):
            # slices past the end are clamped back by XLA: slots are then recomputed, identically
            start = jnp.minimum(p * width, list_width - width)
            j = lax.dynamic_slice_in_dim(jl, start, width, axis=1)
            if clustered and box is not None:
                # the image under which the cluster centres are nearest is every near pair's image
                dc = [x[j] - y[:, None] for x, y in zip(centre, ci)]
                shift = [a - b for a, b in zip(_minimum_image_xyz(dc, box), dc)]
                xj = [x[j] + s[:, :, None] for x, s in zip(xyz, shift)]
            else:
                xj = [x[j] for x in xyz]
            d = [a[:, None, :, :] - b for a, b in zip(xj, xi)]  # (ROWS, 8, width, 8)
            if not clustered and box is not None:
                d = _minimum_image_xyz(d, box)
            inside = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < rc2
            mask = jnp.sum(jnp.where(inside, bits8[None, None, None, :], 0), axis=-1, dtype=jnp.int32)
            self_bit = jnp.where(j[:, None, :] == ic[:, None, None], bits8[None, :, None], 0)
            mask = mask & (valid8[j][:, None, :] & ~self_bit)
            shifts = jnp.asarray([0, 8, 16, 24], jnp.int32)[None, None, None, :]
            packed = jnp.sum(mask.reshape(ROWS, CLUSTER, width // 4, 4) << shifts, axis=-1, dtype=jnp.int32)
            return lax.dynamic_update_slice_in_dim(words, packed, start // 4, axis=2)

        passes = (n_listed + width - 1) // width
        words = lax.fori_loop(0, passes, one_pass, jnp.zeros((ROWS, CLUSTER, n_words), jnp.int32))
        return words.reshape(rows, n_words)

    def clear_excluded(ic, jl, words):
        """Clear the bits of excluded partners: their cluster is found in the sorted list.

        Rows list their excluded partners first, so only as many columns as the fullest row
        of this step are searched.
        """
        ex_all = excl_slot[ic]  # (ROWS, 8, E) slots of excluded partners, -1 for none
        used = jnp.max(jnp.sum(ex_all >= 0, axis=2, dtype=jnp.int32))
        row_base = jnp.arange(rows, dtype=jnp.int32)[:, None] * n_words

        def one_pass(p, clear):
            ex = lax.dynamic_slice_in_dim(ex_all, p * EXCLUSIONS_PER_PASS, EXCLUSIONS_PER_PASS, axis=2)
            target = jnp.where(ex >= 0, ex >> 3, n_clusters + 1).reshape(ROWS, -1)
            pos = count_below(jl, target)
            hit = jnp.take_along_axis(jl, jnp.minimum(pos, list_width - 1), axis=1) == target
            hit, pos = hit.reshape(rows, -1), pos.reshape(rows, -1)
            flat = jnp.where(hit, row_base + (pos >> 2), rows * n_words)
            bit = jnp.left_shift(jnp.int32(1), (pos & 3) * 8 + (ex.reshape(rows, -1) & 7))
            # every excluded partner appears once (_clean_exclusions), so adding bits or-s them
            return clear.at[flat.reshape(-1)].add(bit.reshape(-1))

        passes = (used + EXCLUSIONS_PER_PASS - 1) // EXCLUSIONS_PER_PASS
        clear = lax.fori_loop(0, passes, one_pass, jnp.zeros((rows * n_words + 1,), jnp.int32))
        return words & ~clear[:-1].reshape(rows, n_words)

    def table_rows(jl, words):
        """(rows, capacity) partners, filled only up to the fullest row of this step."""
        owner, shift, count = _owners(words, capacity)
        ids = atoms[jl].reshape(-1)  # atom of every candidate, per i-cluster
        src = (jnp.arange(rows, dtype=jnp.int32) // CLUSTER)[:, None] * (list_width * CLUSTER)
        width = min(SLOTS_PER_PASS, capacity)

        def one_pass(p, out):
            start = jnp.minimum(p * width, capacity - width)
            slots = start + jnp.arange(width, dtype=jnp.int32)[None, :]
            found = _bits_at(words, lax.dynamic_slice_in_dim(owner, start, width, axis=1), shift, slots, count)
            values = jnp.where(found >= 0, ids[src + jnp.maximum(found, 0)], n_atoms)
            return lax.dynamic_update_slice_in_dim(out, values, start, axis=1)

        passes = (jnp.minimum(jnp.max(count), capacity) + width - 1) // width
        out = lax.fori_loop(0, passes, one_pass, jnp.full((rows, capacity), n_atoms, jnp.int32))
        return out, count

    def step(first):
        ic = first + jnp.arange(ROWS, dtype=jnp.int32)
        ci = [x[ic] for x in centre]
        jl, n_listed, cluster_need, block_need = cluster_lists(ic, ci, [h[ic] for h in half])
        words = clear_excluded(ic, jl, pair_words(ic, ci, jl, n_listed))
        real = atoms[ic].reshape(rows) < n_atoms
        out, count = table_rows(jl, words)
        return out, jnp.where(real, count, 0), cluster_need, block_need

    firsts = jnp.arange(n_clusters // ROWS, dtype=jnp.int32) * ROWS
    out, count, cluster_need, block_need = lax.map(step, firsts)
    # rows were built in slot order; row i of the table belongs to atom i
    return dict(idx=out.reshape(-1, capacity)[c["slot_of_atom"]], row_need=jnp.max(count),
                cluster_need=jnp.max(cluster_need), block_need=jnp.max(block_need), fits=fits)


def cluster_sizes(positions, box, list_cutoff: float, cells: tuple):
    """Host sizing: (blocks, clusters) near one cluster at most, and the cluster/block radii [nm]."""
    c = cluster_geometry(positions, box, cells)
    n_clusters, n_blocks = c["n_clusters"], c["n_blocks"]
    rc2 = list_cutoff * list_cutoff

    def step(first):
        ic = first + jnp.arange(ROWS, dtype=jnp.int32)
        ci = [x[ic][:, None] for x in c["centre"]]
        hi = [h[ic][:, None] for h in c["half"]]
        blocks = _near_blocks(c, [x[:, 0] for x in ci], [h[:, 0] for h in hi], box, list_cutoff)
        clusters = _gap2(ci, hi, [x[None, :n_clusters] for x in c["centre"]],
                         [h[None, :n_clusters] for h in c["half"]], box) < rc2
        valid_i = c["valid"][ic][:, None]
        blocks = jnp.sum(blocks & valid_i, axis=1, dtype=jnp.int32)
        clusters = jnp.sum(clusters & c["valid"][None, :n_clusters] & valid_i, axis=1, dtype=jnp.int32)
        return jnp.max(blocks), jnp.max(clusters)

    blocks, clusters = lax.map(step, jnp.arange(n_clusters // ROWS, dtype=jnp.int32) * ROWS)
    return jnp.max(blocks), jnp.max(clusters), c["radii"][0], c["radii"][1], n_blocks
