"""Neural potentials (SchNet-like, PaiNN-like): symmetries, masking, transforms, sums, training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffmd
from diffmd.kernels.errors import InputError
from diffmd.kernels.neighbors import dense_neighbors, exclusion_table
from diffmd.potentials.neural import painn, schnet, species_from_elements, sum_potentials, update_neighbor_tables

# small networks: the tests check structure, not accuracy
SMALL = dict(cutoff=0.5, features=8, interactions=2, n_rbf=6)
BOX = np.array([[2.0, 0.0, 0.0], [0.6, 2.0, 0.0], [-0.4, 0.5, 2.0]])  # reduced triclinic [nm]


def _tables(fn, positions, box=None, **kwargs):
    return fn.neighbor_list(positions, box, **kwargs)


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def ala():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    species, table = species_from_elements(system.topology.elements)
    return system, species, table


_BUILT = {}


def _small(name, species):
    """One small model of each kind per test session (initialisation compiles)."""
    if name not in _BUILT:
        build = schnet if name == "schnet" else painn
        # one SchNet block exercises every SchNet code path; PaiNN needs two for vector-to-vector messages
        sizes = dict(SMALL, interactions=1 if name == "schnet" else 2)
        _BUILT[name] = build(species, key=jax.random.PRNGKey(3), **sizes)
    return _BUILT[name]


@pytest.fixture(scope="module", params=["schnet", "painn"])
def model(request, ala):
    system, species, _ = ala
    params, fn = _small(request.param, species)

    # species as an argument so that permuted and padded copies share one compilation per shape
    def energy(p, x, box, nbrs, sp):
        return dataclasses.replace(fn, species=sp)(p, x, box, nbrs)

    value_and_force = jax.jit(jax.value_and_grad(energy, argnums=1))
    return request.param, params, fn, value_and_force


def test_species_from_elements():
    species, table = species_from_elements([6, 1, 1, 8, 0, 6])
    np.testing.assert_array_equal(table, [1, 6, 8])
    np.testing.assert_array_equal(species, [1, 0, 0, 2, -1, 1])
    species, _ = species_from_elements([8, 1], table=[1, 6, 7, 8])
    np.testing.assert_array_equal(species, [3, 0])
    with pytest.raises(InputError, match="not in the species table"):
        species_from_elements([16], table=[1, 6])


def test_invariance_and_force_equivariance(ala, model):
    name, params, fn, vf = model
    system, species, _ = ala
    x = system.positions
    nbrs = _tables(fn, x)
    e0, g0 = vf(params, x, None, nbrs, species)
    scale = max(abs(float(e0)), 1.0)
    assert np.max(np.abs(g0)) > 0

    rot = _rotation(0)
    xr = x @ rot.T + np.array([0.7, -1.3, 2.1])
    er, gr = vf(params, xr, None, _tables(fn, xr), species)
    assert abs(float(er) - float(e0)) < 2e-5 * scale, name
    # forces rotate with the molecule: F(R x + t) = R F(x)
    np.testing.assert_allclose(gr, np.asarray(g0) @ rot.T, atol=2e-4 * np.max(np.abs(g0)))

    perm = np.random.default_rng(1).permutation(len(x))
    ep, gp = vf(params, x[perm], None, _tables(fn, x[perm]), species[perm])
    assert abs(float(ep) - float(e0)) < 2e-5 * scale, name
    np.testing.assert_allclose(gp, np.asarray(g0)[perm], atol=2e-4 * np.max(np.abs(g0)))


def test_periodic_box_with_padding_atoms(ala, model):
    name, params, fn, vf = model
    system, species, _ = ala
    x = system.positions
    n = len(x)
    e_open, g_open = vf(params, x, None, _tables(fn, x), species)
    # put the molecule across a corner of a triclinic box and wrap every atom into it: the minimum
    # image must put it back together (images are > 1 nm apart, beyond the cutoff). Padding atoms
    # (species -1), one on top of a real atom, must see nobody and add nothing.
    moved = x - x.mean(0)
    frac = moved @ np.linalg.inv(BOX)
    wrapped = (frac - np.floor(frac)) @ BOX
    wrapped = np.concatenate([wrapped, wrapped[:1], wrapped[5:6] + 0.05, [[0.3, 0.2, 0.1]]])
    padded = np.concatenate([species, [-1, -1, -1]]).astype(np.int32)
    as_padded = dataclasses.replace(fn, species=padded)
    e_wrapped, g_wrapped = vf(params, wrapped, BOX, _tables(as_padded, wrapped, BOX), padded)
    tol = 2e-5 * max(abs(float(e_open)), 1.0)
    assert abs(float(e_wrapped) - float(e_open)) < tol, name
    np.testing.assert_allclose(g_wrapped[:n], g_open, atol=1e-4 * np.max(np.abs(g_open)))
    assert np.all(np.asarray(g_wrapped[n:]) == 0)
    # shifting atoms by lattice vectors changes nothing
    shifted = wrapped.copy()
    shifted[4] += BOX[1] - BOX[2]
    shifted[9] -= BOX[0]
    e_shifted, _ = vf(params, shifted, BOX, _tables(as_padded, shifted, BOX), padded)
    assert abs(float(e_shifted) - float(e_wrapped)) < tol, name


def test_padding_entries_and_skin_are_masked(ala, model):
    name, params, fn, vf = model
    system, species, _ = ala
    x = system.positions
    n = len(x)
    nbrs = _tables(fn, x)
    e0, g0 = vf(params, x, None, nbrs, species)
    # the all-pairs table holds partners far beyond the cutoff; the cutoff-only table none beyond it,
    # with its partners shuffled among padding entries: neither may change anything
    dense = dense_neighbors(n, exclusion_table(n, np.zeros((0, 2), int)))
    assert dense.idx.shape == nbrs.idx.shape  # all pairs lie within cutoff + skin: same shapes, no recompilation
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    rng = np.random.default_rng(2)
    idx = np.full(nbrs.idx.shape, n, np.int32)
    for i in range(n):
        js = np.flatnonzero((d[i] < SMALL["cutoff"]) & (np.arange(n) != i))
        idx[i, rng.permutation(idx.shape[1])[: len(js)]] = js
    assert int((idx < n).sum()) < int((np.asarray(nbrs.idx) < n).sum())  # the skin holds pairs
    for table in (dataclasses.replace(nbrs, idx=dense.idx), dataclasses.replace(nbrs, idx=jnp.asarray(idx))):
        e, g = vf(params, x, None, table, species)
        np.testing.assert_allclose(float(e), float(e0), rtol=2e-6, atol=1e-5)
        np.testing.assert_allclose(g, g0, atol=1e-5 * np.max(np.abs(g0)))


def test_jit_eager_vmap_and_parameter_gradients(ala, model):
    name, params, fn, vf = model
    system, species, _ = ala
    n = system.n_atoms
    table = _tables(fn, system.positions)
    batch = system.positions[None] + np.random.default_rng(4).normal(scale=0.01, size=(3, n, 3))
    looped = [float(vf(params, xb, None, table, species)[0]) for xb in batch]  # jitted
    np.testing.assert_allclose(float(fn(params, batch[0], None, table)), looped[0], rtol=1e-5, atol=1e-5)  # eager
    # per-conformation energies and parameter gradients in one vmapped call
    energies, grads = jax.jit(jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0, None, None)))(
        params, batch, None, table)
    np.testing.assert_allclose(energies, looped, rtol=1e-5, atol=1e-5)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves) > 0
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_table_errors(ala):
    system, species, _ = ala
    params, fn = _small("schnet", species)
    _, amber_fn = system.energy_fn()
    with pytest.raises(InputError, match="neighbor table"):
        fn(params, system.positions, None, None)
    with pytest.raises(InputError, match="excludes pairs"):
        fn(params, system.positions, None, amber_fn.neighbor_list(system.positions))
    with pytest.raises(InputError, match="cutoff"):
        fn(params, system.positions, None, dataclasses.replace(_tables(fn, system.positions), cutoff=0.3))
    with pytest.raises(InputError):
        schnet(np.array([0, -2]))


def test_sum_with_amber_and_force_matching(ala):
    system, species, _ = ala
    amber_params, amber_fn = system.energy_fn()
    nn_params, nn_fn = _small("schnet", species)
    params, energy_fn = sum_potentials((amber_params, amber_fn), (nn_params, nn_fn))
    x = system.positions
    nbrs = energy_fn.neighbor_list(x, None)
    assert isinstance(nbrs, tuple) and nbrs[0].dense and not nbrs[1].dense
    assert update_neighbor_tables(nbrs, x + 0.001, None)[1].idx.shape == nbrs[1].idx.shape
    total = jax.jit(energy_fn)(params, x, None, nbrs)
    amber_value_and_grad = jax.jit(jax.value_and_grad(amber_fn, argnums=1))
    e_amber, _ = amber_value_and_grad(amber_params, x)
    e_nn = nn_fn(nn_params, x, None, nbrs[1])  # eager: its ops are cached by the tests above
    np.testing.assert_allclose(float(total), float(e_amber) + float(e_nn), rtol=1e-6)
    assert abs(float(e_nn)) > 1e-3 and total.dtype == jnp.float64

    # force matching on a handful of perturbed conformations against Amber's forces (sanity only)
    rng = np.random.default_rng(5)
    confs = jnp.asarray(x[None] + rng.normal(scale=0.005, size=(4,) + x.shape))
    target = jnp.stack([amber_value_and_grad(amber_params, c)[1] for c in confs])
    target = (target / jnp.std(target)).astype(jnp.float32)
    predict = jax.vmap(jax.grad(nn_fn, argnums=1), in_axes=(None, 0, None, None))

    def loss(p):
        return jnp.mean((predict(p, confs, None, nbrs[1]) - target) ** 2)

    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        value, grad = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grad, s, p)
        return optax.apply_updates(p, updates), s, value

    p, s = nn_params, opt.init(nn_params)
    history = []
    for _ in range(25):
        p, s, value = step(p, s)
        history.append(float(value))
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.9 * history[0], history
