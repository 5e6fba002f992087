"""jit, vmap and grad through the Amber energy model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd


@pytest.fixture(scope="module")
def ala():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn()
    return system, params, energy_fn


@pytest.fixture(scope="module")
def water_rf():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    params, energy_fn = system.energy_fn(nonbonded="cutoff", cutoff=0.9)
    return system, params, energy_fn, energy_fn.neighbor_list(system.positions, system.box)


def test_jit_equals_eager(ala, water_rf):
    system, params, energy_fn = ala
    eager = energy_fn(params, system.positions)
    np.testing.assert_allclose(jax.jit(energy_fn)(params, system.positions), eager, rtol=1e-12)
    system, params, energy_fn, nbrs = water_rf
    eager = energy_fn(params, system.positions, system.box, nbrs)
    jitted = jax.jit(energy_fn)(params, system.positions, system.box, nbrs)
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)


def test_vmap_over_conformations_equals_loop(ala):
    system, params, energy_fn = ala
    rng = np.random.default_rng(1)
    batch = system.positions[None] + rng.normal(scale=0.01, size=(4,) + system.positions.shape)
    batched = jax.vmap(energy_fn, in_axes=(None, 0))(params, batch)
    looped = [energy_fn(params, x) for x in batch]
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    forces = jax.vmap(jax.grad(energy_fn, argnums=1), in_axes=(None, 0))(params, batch)
    np.testing.assert_allclose(forces[2], jax.grad(energy_fn, argnums=1)(params, batch[2]), rtol=1e-10)


def test_vmap_over_parameter_sets(ala):
    system, params, energy_fn = ala
    scales = jnp.array([0.9, 1.0, 1.1])
    stacked = jax.vmap(lambda s: dataclasses.replace(params, charges=params.charges * s))(scales)
    batched = jax.vmap(energy_fn, in_axes=(0, None))(stacked, system.positions)
    for s, e in zip(scales, batched):
        np.testing.assert_allclose(
            e, energy_fn(dataclasses.replace(params, charges=params.charges * s), system.positions), rtol=1e-12)


def _finite_difference(f, params, field, index, h):
    value = getattr(params, field)

    def shifted(delta):
        return f(dataclasses.replace(params, **{field: value.at[index].add(delta)}))

    return (shifted(h) - shifted(-h)) / (2 * h)


@pytest.mark.parametrize("field,index,h", [
    ("charges", 6, 1e-5), ("lj_a", (2, 3), 1e-9), ("lj_b", (1, 1), 1e-7), ("torsion_k", 5, 1e-5),
    ("bond_r0", 3, 1e-6), ("angle_theta0", 4, 1e-6), ("coulomb14_scale", 2, 1e-5), ("lj14_scale", 1, 1e-5),
])
def test_parameter_gradients_match_finite_differences(water_rf, field, index, h):
    system, params, energy_fn, nbrs = water_rf
    params = jax.tree_util.tree_map(jnp.asarray, params)
    f = jax.jit(lambda p: energy_fn(p, system.positions, system.box, nbrs))
    grad = jax.grad(f)(params)
    expected = _finite_difference(f, params, field, index, h)
    got = getattr(grad, field)[index]
    assert abs(got - expected) <= 1e-5 * max(abs(expected), 1.0), f"{field}{index}: {got} vs {expected}"


def test_dispersion_correction_has_parameter_gradient(water_rf):
    system, params, energy_fn, nbrs = water_rf

    def correction(p):
        return energy_fn.terms(p, system.positions, system.box, nbrs)["dispersion_correction"]

    grad = jax.grad(correction)(jax.tree_util.tree_map(jnp.asarray, params))
    assert np.any(np.asarray(grad.lj_b) != 0)  # not frozen out of parameter gradients


def test_forces_finite_at_degenerate_geometry(ala):
    system, params, energy_fn = ala
    x = system.positions.copy()
    t = system.terms.angle_idx[0]
    # make one angle exactly linear: gradients must stay finite
    x[t[2]] = x[t[1]] + (x[t[1]] - x[t[0]])
    grad = jax.grad(energy_fn, argnums=1)(params, x)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_no_recompilation_on_second_call(water_rf):
    system, params, energy_fn, nbrs = water_rf
    f = jax.jit(energy_fn)
    f(params, system.positions, system.box, nbrs)
    size = f._cache_size()
    f(params, system.positions + 0.001, system.box, nbrs)
    assert f._cache_size() == size


def test_neighbor_update_under_jit_and_overflow_flag(water_rf):
    system, params, energy_fn, _ = water_rf
    small = energy_fn.neighbor_list(system.positions, system.box, capacity=50)
    assert bool(small.overflow)  # a deliberately small table reports that it did not fit
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    assert not bool(nbrs.overflow)
    rng = np.random.default_rng(3)
    moved = system.positions + rng.normal(scale=0.03, size=system.positions.shape)
    updated = jax.jit(diffmd.update_neighbors)(nbrs, moved, system.box)
    fresh = energy_fn.neighbor_list(moved, system.box)
    e1 = energy_fn(params, moved, system.box, updated)
    e2 = energy_fn(params, moved, system.box, fresh)
    np.testing.assert_allclose(e1, e2, rtol=1e-10)
    assert not np.array_equal(np.asarray(updated.reference_positions), np.asarray(nbrs.reference_positions))


def test_first_use_of_all_pairs_table_inside_jit():
    # the lazily built all-pairs table must not capture a tracer when first built under jit
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn()
    jitted = jax.jit(lambda x: energy_fn(params, x))(system.positions)
    np.testing.assert_allclose(jitted, energy_fn(params, system.positions), rtol=1e-12)
