"""Neighbor tables against a brute-force numpy reference.

The reference tests every pair under all 27 neighbouring periodic images (no
minimum-image shortcut), so the cluster search, its one-image argument and the
bit-mask compaction are all checked against an independent oracle.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from diffmd.kernels import _neighbor_build as search
from diffmd.kernels import neighbors as nb
from diffmd.kernels.neighbors import (allocate_neighbors, build_table, dense_neighbors, exclusion_table,
                                      update_neighbors)

IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)


def reference_rows(positions, box, list_cutoff, exclusions=None):
    """Per atom, the sorted partners within the list cutoff (not excluded), by a k-d tree.

    Periodic boxes: the atoms, wrapped into the primary cell, are copied to all
    27 neighbouring images and every pair is tested under every image (no
    minimum-image shortcut).
    """
    x = np.asarray(positions, np.float64)
    n = len(x)
    if box is None:
        images = x
    else:
        box = np.asarray(box, np.float64)
        frac = x @ np.linalg.inv(box)
        x = (frac - np.floor(frac)) @ box
        images = (x[None, :, :] + (IMAGES @ box)[:, None, :]).reshape(-1, 3)
    found = cKDTree(images).query_ball_point(x, list_cutoff)
    rows = []
    for i, js in enumerate(found):
        js = np.unique(np.asarray(js, dtype=np.int64) % n)
        js = js[js != i]
        if exclusions is not None:
            excl = np.asarray(exclusions[i])
            js = js[~np.isin(js, excl[excl < n])]
        rows.append(js)
    return rows


def pair_distance(positions, box, i, j):
    """Distances [nm] of atom i to atoms j, minimum over the 27 nearest images."""
    x = np.asarray(positions, np.float64)
    d = x[np.atleast_1d(j)] - x[i]
    if box is None:
        return np.linalg.norm(d, axis=-1)
    box = np.asarray(box, np.float64)
    df = d @ np.linalg.inv(box)
    df -= np.round(df)
    d = (df[:, None, :] + IMAGES[None, :, :]) @ box
    return np.min(np.linalg.norm(d, axis=-1), axis=1)


def table_rows(idx):
    idx = np.asarray(idx)
    n = idx.shape[0]
    rows = []
    for row in idx:
        real = row[row < n]
        assert np.all(row[len(real):] == n), "rows are left-packed and padded with n_atoms"
        assert len(np.unique(real)) == len(real), "no partner twice"
        rows.append(np.sort(real))
    return rows


def assert_same_pairs(idx, positions, box, list_cutoff, exclusions, tol=0.0):
    """Exact pair sets; with ``tol`` > 0, pairs whose distance is within tol of the cutoff may differ."""
    got = table_rows(idx)
    want = reference_rows(positions, box, list_cutoff, exclusions)
    for i, (g, w) in enumerate(zip(got, want)):
        diff = np.setxor1d(g, w)
        if tol and len(diff):
            diff = diff[np.abs(pair_distance(positions, box, i, diff) - list_cutoff) > tol]
        assert len(diff) == 0, f"row {i}: pairs {diff} differ from the reference"


def random_exclusions(positions, box, rng, list_cutoff, count):
    """Exclusion pairs drawn among pairs that would otherwise be in the table, plus a few far ones."""
    rows = reference_rows(positions, box, list_cutoff)
    near = np.array([(i, j) for i, r in enumerate(rows) for j in r if j > i])
    pick = near[rng.choice(len(near), size=min(count, len(near)), replace=False)]
    n = len(positions)
    far = rng.integers(0, n, size=(count // 10 + 1, 2))
    return exclusion_table(n, np.concatenate([pick, far]))


def uniform(rng, n, box):
    return rng.random((n, 3)) @ np.asarray(box)


def triclinic_box(a, b, c):
    # reduced form: a along x, b in the xy plane, |bx| <= a/2, |cx| <= a/2, |cy| <= b/2
    return np.array([[a, 0.0, 0.0], [0.3 * a, b, 0.0], [-0.25 * a, 0.4 * b, c]])


def n_blocks(nbrs):
    n = nbrs.idx.shape[0]
    return search.n_slots(n, int(np.prod(nbrs.grid[:3]))) // (search.CLUSTER * search.BLOCK)


CASES = {
    # name: (n_atoms, box, cutoff, skin, expected search: 'blocks', 'clusters' or 'all'); periodic cases
    # have about the density of water, where the clusters are compact enough for one image per pair
    "orthorhombic": (9000, np.diag([4.6, 4.5, 4.4]), 0.4, 0.1, "blocks"),
    "triclinic": (12000, triclinic_box(5.0, 4.9, 4.9), 0.4, 0.1, "blocks"),
    "box_without_blocks": (6000, np.diag([4.0, 3.9, 3.85]), 0.4, 0.1, "clusters"),
    "cloud": (1500, None, 0.8, 0.1, "clusters"),
    "wide_cloud": (3000, None, 0.5, 0.1, "blocks"),
    "small_box": (800, np.diag([2.0, 2.1, 1.95]), 0.8, 0.15, "all"),
    "small_triclinic": (700, triclinic_box(2.0, 1.9, 1.9), 0.85, 0.1, "all"),
    "tiny_cloud": (60, None, 0.7, 0.1, "all"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    n, box, cutoff, skin, search = CASES[request.param]
    rng = np.random.default_rng(sorted(CASES).index(request.param))
    if box is None:
        positions = rng.normal(scale=n / 1500, size=(n, 3))  # a dense blob with a sparse fringe
    else:
        positions = uniform(rng, n, box) - 0.5 * np.sum(box, axis=0)  # partly outside the primary box
    exclusions = random_exclusions(positions, box, rng, cutoff + skin, n // 3)
    nbrs = allocate_neighbors(positions, box, exclusions, cutoff, skin)
    return dict(name=request.param, positions=positions, box=box, cutoff=cutoff, skin=skin,
                exclusions=exclusions, nbrs=nbrs, search=search, rng=rng)


def test_pairs_match_brute_force(case):
    nbrs = case["nbrs"]
    list_cutoff = case["cutoff"] + case["skin"]
    assert not bool(nbrs.overflow)
    assert_same_pairs(nbrs.idx, case["positions"], case["box"], list_cutoff, case["exclusions"])
    want = max(len(r) for r in reference_rows(case["positions"], case["box"], list_cutoff, case["exclusions"]))
    assert int(nbrs.needed) == want
    assert nbrs.capacity >= want


def test_search_path_is_the_intended_one(case):
    nbrs = case["nbrs"]
    if case["search"] == "all":
        assert nbrs.grid is None
    else:
        assert nbrs.grid is not None
        assert (nbrs.grid[3] < n_blocks(nbrs)) == (case["search"] == "blocks")


def test_rebuild_after_moves_matches_brute_force(case):
    """A jitted rebuild at displaced positions (atoms crossing cells and box faces)."""
    rng = case["rng"]
    box = case["box"]
    moved = case["positions"] + rng.normal(scale=0.05, size=case["positions"].shape)
    update = jax.jit(update_neighbors)
    fresh = update(case["nbrs"], jnp.asarray(moved), None if box is None else jnp.asarray(box))
    np.testing.assert_array_equal(np.asarray(fresh.reference_positions), moved)
    assert not bool(fresh.overflow), f"needed {int(fresh.needed)}, capacity {fresh.capacity}"
    assert_same_pairs(fresh.idx, moved, box, case["cutoff"] + case["skin"], case["exclusions"])


@pytest.mark.parametrize("case", ["cloud", "small_box", "triclinic"], indirect=True)  # each costs a compilation
def test_float32_positions(case):
    """Single precision: the same pairs except those within rounding of the cutoff."""
    box = case["box"]
    pos32 = np.asarray(case["positions"], np.float32)
    box32 = None if box is None else np.asarray(box, np.float32)
    nbrs = allocate_neighbors(pos32, box32, case["exclusions"], case["cutoff"], case["skin"])
    assert nbrs.idx.dtype == jnp.int32
    assert_same_pairs(nbrs.idx, case["positions"], box, case["cutoff"] + case["skin"], case["exclusions"],
                      tol=1e-5)


def test_capacity_overflow_flag():
    rng = np.random.default_rng(1)
    box = np.diag([2.5, 2.5, 2.5])
    x = uniform(rng, 900, box)
    excl = exclusion_table(900, np.zeros((0, 2), int))
    full = allocate_neighbors(x, box, excl, 0.9, 0.1)
    small = allocate_neighbors(x, box, excl, 0.9, 0.1, capacity=10)
    assert not bool(full.overflow) and bool(small.overflow)
    assert small.capacity == 10
    assert int(small.needed) == int(full.needed) > 10
    # the overflowing rows hold a subset of the true partners
    for got, want in zip(table_rows(small.idx), table_rows(full.idx)):
        assert np.all(np.isin(got, want))


@pytest.fixture(scope="module")
def dense():
    """9000 atoms at about the density of water in a 4.5 nm box, cutoff 0.4 nm + skin 0.1 nm."""
    rng = np.random.default_rng(2)
    box = np.diag([4.5, 4.5, 4.5])
    x = uniform(rng, 9000, box)
    excl = random_exclusions(x, box, rng, 0.5, 3000)
    nbrs = allocate_neighbors(x, box, excl, 0.4, 0.1)
    assert nbrs.grid is not None and nbrs.grid[3] < n_blocks(nbrs) and not bool(nbrs.overflow)
    return dict(x=x, box=box, excl=excl, nbrs=nbrs, rng=rng)


def _build_for(nbrs, positions, box, cell_capacity, grid=None):
    grid = nbrs.grid if grid is None else grid
    return jax.jit(lambda p, b: build_table(p, b, nbrs.exclusions, list_cutoff=0.5, capacity=nbrs.capacity,
                                            grid=grid, cell_capacity=cell_capacity))(positions, jnp.asarray(box))


def test_cluster_list_overflow_flag(dense):
    x, box, nbrs = dense["x"], dense["box"], dense["nbrs"]
    _, _, cell_need, overflow = _build_for(nbrs, x, box, nbrs.cell_capacity)
    assert not bool(overflow) and int(cell_need) <= nbrs.cell_capacity
    _, row_need, cell_need, overflow = _build_for(nbrs, x, box, 8)
    assert bool(overflow) and int(cell_need) > 8 and int(row_need) <= nbrs.capacity
    # a block list too short for the near blocks
    assert bool(_build_for(nbrs, x, box, nbrs.cell_capacity, nbrs.grid[:3] + (2,))[3])


def test_density_and_box_changes_are_flagged(dense):
    x, box, nbrs = dense["x"], dense["box"], dense["nbrs"]
    # squeezing the atoms together fills the cluster lists of the table allocated for the old density
    squeezed = jax.jit(update_neighbors)(nbrs, jnp.asarray(0.6 * x), jnp.asarray(box))
    assert bool(squeezed.overflow)
    # the same atoms in a 1.8 nm box: clusters are now too large for one image per cluster pair
    fits = jax.jit(lambda p, b: search.build(p, b, nbrs.exclusions, 0.5, 8, nbrs.grid, 10**4)["fits"])
    assert bool(fits(x, jnp.asarray(box)))
    assert not bool(fits(0.4 * x, jnp.asarray(0.4 * box)))
    assert bool(_build_for(nbrs, 0.4 * x, 0.4 * box, nbrs.cell_capacity)[3])


def test_update_only_when_moved_past_half_skin():
    rng = np.random.default_rng(3)
    box = np.diag([3.0, 3.0, 3.0])
    x = uniform(rng, 700, box)
    excl = exclusion_table(700, np.zeros((0, 2), int))
    nbrs = allocate_neighbors(x, box, excl, 0.8, 0.2)
    update = jax.jit(update_neighbors)
    little = x.copy()
    little[5] += np.array([0.099, 0.0, 0.0])  # below skin / 2 = 0.1
    kept = update(nbrs, jnp.asarray(little), jnp.asarray(box))
    np.testing.assert_array_equal(np.asarray(kept.reference_positions), x)
    np.testing.assert_array_equal(np.asarray(kept.idx), np.asarray(nbrs.idx))
    far = x.copy()
    far[5] += np.array([0.0, 0.101, 0.0])
    far[9] += np.array([1.0, 0.0, 0.0])  # moved a lot, so the table changes
    rebuilt = update(nbrs, jnp.asarray(far), jnp.asarray(box))
    np.testing.assert_array_equal(np.asarray(rebuilt.reference_positions), far)
    assert not np.array_equal(np.asarray(rebuilt.idx), np.asarray(nbrs.idx))
    assert_same_pairs(rebuilt.idx, far, box, 1.0, excl)
    # a changed box alone also rebuilds
    bigger = update(nbrs, jnp.asarray(x), jnp.asarray(box * 1.01))
    np.testing.assert_allclose(np.asarray(bigger.reference_box), box * 1.01)


def test_jit_equals_eager_and_vmap_equals_loop(dense):
    x, box, nbrs, excl, rng = dense["x"], dense["box"], dense["nbrs"], dense["excl"], dense["rng"]
    batch = np.stack([x + rng.normal(scale=0.1, size=x.shape) for _ in range(3)])
    jbox = jnp.asarray(box)
    eager = update_neighbors(nbrs, jnp.asarray(batch[0]), jbox)
    jitted = [jax.jit(update_neighbors)(nbrs, jnp.asarray(b), jbox) for b in batch]
    mapped = jax.jit(jax.vmap(update_neighbors, in_axes=(None, 0, None)))(nbrs, jnp.asarray(batch), jbox)
    np.testing.assert_array_equal(np.asarray(eager.idx), np.asarray(jitted[0].idx))
    for k, j in enumerate(jitted):
        np.testing.assert_array_equal(np.asarray(mapped.idx[k]), np.asarray(j.idx))
        assert int(mapped.needed[k]) == int(j.needed) and bool(mapped.overflow[k]) == bool(j.overflow)
    assert_same_pairs(jitted[0].idx, batch[0], box, 0.5, excl)


def test_exclusion_table_and_cleaning():
    table = exclusion_table(5, [[0, 1], [1, 0], [2, 2], [3, 1], [0, 1]])
    assert table.shape == (5, 2)
    assert sorted(table[1][table[1] < 5]) == [0, 3]
    assert np.all(table[2] == 5) and np.all(table[4] == 5)
    messy = np.array([[1, 1, 0, 5], [0, 0, 5, 5], [5, 5, 5, 5], [5, 5, 5, 5], [4, 4, 4, 5]])
    clean = nb._clean_exclusions(messy, 5)
    assert [sorted(r[r < 5]) for r in clean] == [[1], [0], [], [], []]


def test_dense_table_is_every_non_excluded_pair():
    excl = exclusion_table(6, [[0, 1], [2, 5]])
    dense = dense_neighbors(6, excl)
    rows = table_rows(dense.idx)
    assert list(rows[0]) == [2, 3, 4, 5] and list(rows[2]) == [0, 1, 3, 4]
    assert update_neighbors(dense, jnp.zeros((6, 3))) is dense


@pytest.mark.parametrize("length", [1, 7, 32, 33, 100, 1100])
def test_prefix_sum(length):
    rng = np.random.default_rng(length)
    counts = rng.integers(0, 33, size=(3, length))
    got = np.asarray(search.prefix_sum(jnp.asarray(counts, jnp.int32)))
    np.testing.assert_array_equal(got, np.cumsum(counts, axis=1))


@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_compact_matches_nonzero(density):
    rng = np.random.default_rng(int(density * 100))
    flags = rng.random((40, 9 * 32)) < density
    words = search.pack_words(jnp.asarray(flags))
    capacity = 150
    found, counts = jax.jit(search.compact, static_argnums=1)(words, capacity)
    found = np.asarray(found)
    for row, f, c in zip(flags, found, np.asarray(counts)):
        want = np.nonzero(row)[0]
        assert c == len(want)
        k = min(len(want), capacity)
        np.testing.assert_array_equal(f[:k], want[:k])
        assert np.all(f[k:] == -1)
