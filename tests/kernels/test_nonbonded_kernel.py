"""The optimised nonbonded kernel against its plain-jnp reference (values and every gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmd.kernels import nonbonded as nb
from diffmd.kernels.neighbors import allocate_neighbors, exclusion_table


def random_system(n=300, n_types=4, box_length=2.5, seed=0):
    rng = np.random.default_rng(seed)
    # jittered lattice: no overlapping atoms
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    positions = (grid + 0.5 + rng.uniform(-0.2, 0.2, (n, 3))) * box_length / side
    charges = rng.uniform(-0.8, 0.8, n)
    atom_type = rng.integers(0, n_types, n).astype(np.int32)
    sigma = rng.uniform(0.2, 0.35, n_types)
    eps = rng.uniform(0.1, 1.0, n_types)
    s = 0.5 * (sigma[:, None] + sigma[None, :])
    e = np.sqrt(eps[:, None] * eps[None, :])
    pairs = np.stack([np.arange(0, n - 1, 2), np.arange(1, n, 2)], 1)  # "bonded" pairs, excluded
    return positions, np.diag([box_length] * 3), charges, atom_type, 4 * e * s**12, 4 * e * s**6, pairs


@pytest.mark.parametrize("mode", ["dense", "cutoff-periodic", "cutoff-nonperiodic", "lj-only", "ewald", "ewald-chunk-7"])
def test_fast_kernel_equals_reference(mode):
    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system()
    excl = exclusion_table(len(positions), pairs)
    kwargs = {}
    if mode == "dense":
        idx, use_box, kwargs = jnp.asarray(excl), None, dict(dense=True)
    else:
        use_box = box if mode != "cutoff-nonperiodic" else None
        nbrs = allocate_neighbors(positions, use_box, excl, 0.9, 0.1)
        idx = nbrs.idx
        k_rf, c_rf = nb.reaction_field_constants(0.9)
        kwargs = dict(cutoff=0.9, k_rf=k_rf, c_rf=c_rf, coulomb=mode != "lj-only")
        if mode.startswith("ewald"):  # PME direct space; 7-row chunks leave a shifted, overlapping last chunk
            kwargs = {"cutoff": 0.9, "ewald_alpha": 3.1, "chunk": 7 if mode.endswith("7") else None}

    def total(fn, x, b, q, a, bb):
        e_c, e_lj = fn(x, b, idx, q, atom_type, a, bb, **kwargs)
        return e_c + 2.0 * e_lj  # distinct weights check each cotangent path

    args = (positions, use_box, charges, lj_a, lj_b)
    argnums = (0, 2, 3, 4) if use_box is None else (0, 1, 2, 3, 4)
    fast = jax.jit(jax.value_and_grad(lambda *a: total(nb.table_energies, *a), argnums=argnums))(*args)
    ref = jax.jit(jax.value_and_grad(lambda *a: total(nb.table_energies_reference, *a), argnums=argnums))(*args)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-12)
    for g_fast, g_ref in zip(fast[1], ref[1]):
        np.testing.assert_allclose(g_fast, g_ref, rtol=1e-9, atol=1e-9 * np.abs(g_ref).max())


def test_dense_mode_equals_table_mode():
    positions, _, charges, atom_type, lj_a, lj_b, pairs = random_system(n=120, seed=3)
    excl = exclusion_table(len(positions), pairs)
    from diffmd.kernels.neighbors import dense_neighbors

    table = dense_neighbors(len(positions), excl).idx
    a = nb.table_energies(positions, None, table, charges, atom_type, lj_a, lj_b)
    b = nb.table_energies(positions, None, jnp.asarray(excl), charges, atom_type, lj_a, lj_b, dense=True)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_float32_kernel_close_to_float64():
    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system(seed=5)
    excl = exclusion_table(len(positions), pairs)
    nbrs = allocate_neighbors(positions, box, excl, 0.9, 0.1)

    def forces(dtype):
        f = jax.grad(lambda x: sum(nb.table_energies(x, jnp.asarray(box, dtype), nbrs.idx, jnp.asarray(charges, dtype),
                                                     atom_type, jnp.asarray(lj_a, dtype), jnp.asarray(lj_b, dtype),
                                                     cutoff=0.9, accumulate=jnp.float64)))
        return np.asarray(f(jnp.asarray(positions, dtype)), np.float64)

    f64, f32 = forces(jnp.float64), forces(jnp.float32)
    rms = np.sqrt(np.mean(f64**2))
    assert np.sqrt(np.mean((f32 - f64) ** 2)) < 1e-5 * rms


def test_ewald_direct_equals_pme_kernel():
    """The fused LJ + erfc pass gives PME's direct-space energy and forces (kernels.pme) exactly."""
    from diffmd.kernels import pme

    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system(seed=7)
    excl = exclusion_table(len(positions), pairs)
    nbrs = allocate_neighbors(positions, box, excl, 0.9, 0.1)
    alpha = 3.47

    def fused(x):
        return nb.table_energies(x, jnp.asarray(box), nbrs.idx, charges, atom_type, lj_a, lj_b, cutoff=0.9,
                                 ewald_alpha=alpha)[0]

    def direct(x):
        return pme.pme_direct_energy(x, jnp.asarray(charges), jnp.asarray(box), nbrs.idx, alpha, 0.9)

    x = jnp.asarray(positions)
    e1, f1 = jax.jit(jax.value_and_grad(fused))(x)
    e2, f2 = jax.jit(jax.value_and_grad(direct))(x)
    np.testing.assert_allclose(e1, e2, rtol=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-10 * np.abs(f2).max())


def test_ewald_settings_are_checked():
    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system(n=20)
    excl = jnp.asarray(exclusion_table(len(positions), pairs))
    with pytest.raises(ValueError, match="needs a cutoff"):
        nb.table_energies(positions, None, excl, charges, atom_type, lj_a, lj_b, dense=True, ewald_alpha=3.0)
    with pytest.raises(ValueError, match="not both"):
        nb.table_energies(positions, box, excl, charges, atom_type, lj_a, lj_b, cutoff=0.9, k_rf=1.0,
                          ewald_alpha=3.0)


def test_fitted_erfc_error():
    """The float32 PME pair math uses erfc(x) = exp(-x^2) * polynomial(1 / (1 + x / 2)): its error over
    the fitted range is 2e-8 relative in float64 and within float32 rounding (as lax.erfc) in float32."""
    import math

    x = np.linspace(0.0, nb.ERFC_FIT_RANGE, 40001)
    exact = np.array([math.erfc(v) for v in x])
    fit64 = np.asarray(nb.erfc_scaled_fit(jnp.asarray(x)) * jnp.exp(-jnp.asarray(x) ** 2))
    assert np.max(np.abs(fit64 / exact - 1.0)) < 2e-8
    x32 = jnp.asarray(x, jnp.float32)
    fit32 = np.asarray(jax.jit(lambda v: nb.erfc_scaled_fit(v) * jnp.exp(-v * v))(x32), np.float64)
    lax32 = np.asarray(jax.jit(jax.lax.erfc)(x32), np.float64)
    exact32 = np.array([math.erfc(float(v)) for v in np.asarray(x32, np.float64)])
    err_fit, err_lax = np.max(np.abs(fit32 / exact32 - 1.0)), np.max(np.abs(lax32 / exact32 - 1.0))
    assert err_fit < 2e-6 and err_fit < 3.0 * err_lax


def test_float32_ewald_pass_close_to_float64():
    """float32 energies and forces of the fused LJ + erfc pass (fitted erfc) against float64 (lax.erfc)."""
    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system(seed=11)
    excl = exclusion_table(len(positions), pairs)
    nbrs = allocate_neighbors(positions, box, excl, 0.9, 0.1)

    def run(dtype):
        def total(x):
            e_c, e_lj = nb.table_energies(x, jnp.asarray(box, dtype), nbrs.idx, jnp.asarray(charges, dtype),
                                          atom_type, jnp.asarray(lj_a, dtype), jnp.asarray(lj_b, dtype), cutoff=0.9,
                                          accumulate=jnp.float64, ewald_alpha=3.47)
            return e_c + e_lj

        e, g = jax.jit(jax.value_and_grad(total))(jnp.asarray(positions, dtype))
        return float(e), np.asarray(g, np.float64)

    (e64, f64), (e32, f32) = run(jnp.float64), run(jnp.float32)
    assert abs(e32 - e64) < 1e-5 * abs(e64)
    assert np.sqrt(np.mean((f32 - f64) ** 2)) < 1e-5 * np.sqrt(np.mean(f64**2))


def test_ewald_pass_under_vmap_equals_loop():
    positions, box, charges, atom_type, lj_a, lj_b, pairs = random_system(n=120, seed=13)
    excl = exclusion_table(len(positions), pairs)
    nbrs = allocate_neighbors(positions, box, excl, 0.9, 0.1)
    frames = jnp.asarray(np.stack([positions, positions + 0.01]))

    def forces(x):
        return jax.grad(lambda y: sum(nb.table_energies(y, jnp.asarray(box), nbrs.idx, charges, atom_type, lj_a, lj_b,
                                                        cutoff=0.9, ewald_alpha=3.0, chunk=32)))(x)

    batched = jax.jit(jax.vmap(forces))(frames)
    for k in range(2):
        np.testing.assert_allclose(batched[k], forces(frames[k]), rtol=1e-12, atol=1e-12)
