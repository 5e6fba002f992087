"""MBAR (vs pymbar and vs harmonic oscillators) and free-energy gradients by the end-state identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmd.free_energy import free_energy_gradient, mbar
from diffmd.kernels.errors import InputError

KT = 2.494  # kJ/mol


def _oscillators(seed=0, n_per_state=(400, 300, 0, 500, 350)):
    """Samples of K 3-D harmonic oscillators U_k = k_k/2 |x - c_k|^2 (one state unsampled)."""
    rng = np.random.default_rng(seed)
    k = np.array([400.0, 250.0, 160.0, 100.0, 60.0])  # kJ/mol/nm^2
    c = np.array([0.0, 0.03, 0.06, 0.09, 0.12])  # nm, along x
    x = np.concatenate([rng.normal(0.0, np.sqrt(KT / kk), size=(n, 3)) + [cc, 0, 0]
                        for kk, cc, n in zip(k, c, n_per_state)])
    u_kn = 0.5 * k[:, None] * np.sum((x[None, :, :] - np.stack([c, 0 * c, 0 * c], 1)[:, None, :]) ** 2, -1) / KT
    exact = -1.5 * np.log(2 * np.pi * KT / k)  # reduced free energies
    return u_kn, np.array(n_per_state), exact - exact[0]


def test_mbar_matches_pymbar_and_harmonic_oscillators():
    pymbar = pytest.importorskip("pymbar")
    u_kn, n_k, exact = _oscillators()
    got = mbar(u_kn, n_k)
    with jax.numpy_rank_promotion("allow"):  # pymbar's own JAX code broadcasts freely
        ref = pymbar.MBAR(u_kn, n_k, solver_protocol="robust")
        f_ref = ref.compute_free_energy_differences()
        overlap, weights = ref.compute_overlap()["matrix"], ref.weights()
    np.testing.assert_allclose(got.differences, f_ref["Delta_f"], atol=1e-8)
    np.testing.assert_allclose(got.uncertainties, f_ref["dDelta_f"], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got.overlap, overlap, atol=1e-10)
    np.testing.assert_allclose(np.exp(got.log_weights), weights, atol=1e-12)
    # the analytic answer (including the unsampled state) within 4 standard errors
    err = got.free_energies - exact
    assert np.all(np.abs(err) <= 4 * got.uncertainties[0] + 1e-12), (err, got.uncertainties[0])
    assert np.all(got.uncertainties[0, 1:] > 0.01)  # finite samples: a real, non-zero error bar
    np.testing.assert_allclose(got.overlap.sum(axis=1), 1.0, atol=1e-10)


def test_mbar_input_errors():
    u_kn, n_k, _ = _oscillators(n_per_state=(5, 5, 0, 5, 5))
    with pytest.raises(InputError, match="add up"):
        mbar(u_kn, n_k + 1)
    bad = u_kn.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mbar(bad, n_k)


def _harmonic_energy(params, positions, box=None, neighbors=None):
    """U = k(lambda)/2 sum |x - c|^2 with k(lambda) = lambda k1 + (1 - lambda) k2 [kJ/mol]."""
    k = params["lam"] * params["k1"] + (1.0 - params["lam"]) * params["k2"]
    return 0.5 * k * jnp.sum((positions - params["c"][None, :]) ** 2)


def test_free_energy_gradient_end_state_identity():
    # Delta F = F(lambda=1) - F(lambda=0) = (3n/2) kT ln(k1/k2) for n atoms: dF/dk1 = 3n kT / (2 k1),
    # dF/dk2 = -3n kT / (2 k2), dF/dc = 0
    rng = np.random.default_rng(1)
    n_atoms, k1, k2 = 4, 300.0, 120.0
    c = np.array([0.1, -0.2, 0.3])
    params = {"k1": jnp.asarray(k1), "k2": jnp.asarray(k2), "c": jnp.asarray(c), "lam": jnp.asarray(0.0)}
    at = [dict(params, lam=jnp.asarray(lam)) for lam in (0.0, 0.25, 0.5, 0.75, 1.0)]
    ks = [lam * k1 + (1 - lam) * k2 for lam in (0.0, 0.25, 0.5, 0.75, 1.0)]
    frames = [c + rng.normal(0.0, np.sqrt(KT / k), size=(2000, n_atoms, 3)) for k in ks]
    want = np.array([3 * n_atoms * KT / (2 * k1), -3 * n_atoms * KT / (2 * k2)])
    # each end state's own samples
    g = free_energy_gradient(_harmonic_energy, at[0], at[-1], frames[0], frames[-1])
    np.testing.assert_allclose([g["k1"], g["k2"]], want, rtol=0.03)
    # dU/dc = -k sum (x - c) averages to zero in both states; its standard error per component:
    sigma_c = np.sqrt(n_atoms * KT * (k1 + k2) / 2000)
    assert np.all(np.abs(np.asarray(g["c"])) < 5 * sigma_c)
    # all windows' samples with MBAR weights for the end states
    everything = np.concatenate(frames)
    u_kn = np.stack([np.asarray(jax.vmap(lambda x, p=p: _harmonic_energy(p, x))(jnp.asarray(everything))) / KT
                     for p in at])
    result = mbar(u_kn, [len(f) for f in frames])
    assert abs(result.free_energies[-1] * KT - 1.5 * n_atoms * KT * np.log(k1 / k2)) < 4 * KT * result.uncertainties[0, -1]
    g = free_energy_gradient(_harmonic_energy, at[0], at[-1], everything, everything,
                             weights_start=result.weights(0), weights_end=result.weights(-1))
    np.testing.assert_allclose([g["k1"], g["k2"]], want, rtol=0.03)
    # and the finite difference of the analytic Delta F in k1 agrees with the same numbers
    h = 1e-3
    fd = 1.5 * n_atoms * KT * (np.log((k1 + h) / k2) - np.log((k1 - h) / k2)) / (2 * h)
    assert abs(float(g["k1"]) - fd) < 0.03 * fd
    with pytest.raises(InputError, match="weights"):
        free_energy_gradient(_harmonic_energy, at[0], at[-1], frames[0], frames[-1], weights_end=np.zeros(2000))
