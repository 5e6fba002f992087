"""DiffTRe-style reweighting: exact at the reference, analytic on a harmonic oscillator,
gradients equal to finite differences of the estimator, ESS falls away from the reference,
and the fit loop recovers a parameter (toy, and the torsion example in quick mode)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffmd.kernels.errors import InputError
from diffmd.learn.reweighting import (effective_sample_size, fit, reference_sample, reweighted_mean,
                                reweighting_weights)

KT = 2.5  # kJ/mol
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def harmonic(theta, x):
    """U = k/2 |x|^2 for one particle: <x_a^2> = kT/k per component."""
    return 0.5 * theta["k"] * jnp.sum(x**2)


def draw(k, n, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(0.0, np.sqrt(KT / k), (n, 1, 3)))


def x2(frames):
    return jnp.mean(frames[:, 0, :] ** 2, axis=-1)  # (n,) mean square per component


def test_identity_at_reference_and_analytic_mean():
    theta0 = {"k": jnp.asarray(100.0)}
    sample = reference_sample(harmonic, theta0, draw(100.0, 40000, 0))
    w = reweighting_weights(harmonic, theta0, sample, KT)
    np.testing.assert_allclose(w, 1.0 / 40000, rtol=1e-12)
    assert float(effective_sample_size(w)) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(reweighted_mean(w, x2(sample.frames)), jnp.mean(x2(sample.frames)), rtol=1e-12)
    for k in (90.0, 110.0, 125.0):
        w = reweighting_weights(harmonic, {"k": jnp.asarray(k)}, sample, KT)
        # 40,000 samples: the statistical error of <x^2> is about 0.5%
        assert float(reweighted_mean(w, x2(sample.frames))) == pytest.approx(KT / k, rel=0.02), k
    with pytest.raises(InputError, match="frames"):
        reference_sample(harmonic, theta0, jnp.zeros((5, 3)))


def test_ess_drops_away_from_reference():
    theta0 = {"k": jnp.asarray(100.0)}
    sample = reference_sample(harmonic, theta0, draw(100.0, 5000, 1))
    ess = [float(effective_sample_size(reweighting_weights(harmonic, {"k": jnp.asarray(k)}, sample, KT)))
           for k in (100.0, 110.0, 130.0, 200.0)]
    assert ess[0] == pytest.approx(1.0) and all(a > b for a, b in zip(ess, ess[1:])), ess
    assert ess[-1] < 0.8


def test_gradient_matches_finite_differences_and_analytic():
    sample = reference_sample(harmonic, {"k": jnp.asarray(100.0)}, draw(100.0, 40000, 2))

    def estimate(k):
        return reweighted_mean(reweighting_weights(harmonic, {"k": k}, sample, KT), x2(sample.frames))

    k, h = 105.0, 1e-3
    g = float(jax.grad(estimate)(jnp.asarray(k)))
    fd = (float(estimate(jnp.asarray(k + h))) - float(estimate(jnp.asarray(k - h)))) / (2 * h)
    assert g == pytest.approx(fd, rel=1e-6)
    assert g == pytest.approx(-KT / k**2, rel=0.1)  # d(kT/k)/dk, within sampling error


def test_fit_recovers_spring_constant_and_resamples():
    k_true = 150.0
    target = KT / k_true
    calls = []

    def sampler(theta):
        calls.append(float(theta["k"]))
        return draw(float(theta["k"]), 4000, len(calls))

    def loss(weights, frames, theta):
        return (reweighted_mean(weights, x2(frames)) / target - 1.0) ** 2

    result = fit(loss, {"k": 100.0}, energy=harmonic, sampler=sampler, kT=KT, optimizer=optax.adam(5.0),
                 n_iterations=60, ess_threshold=0.9)
    assert float(result.theta["k"]) == pytest.approx(k_true, rel=0.05)
    assert result.samples == len(calls) > 1
    assert [r["resampled"] for r in result.history].count(True) == result.samples
    assert all(r["ess"] >= 0.9 for r in result.history)  # every step used a sample above the threshold
    with pytest.raises(InputError, match="ess_threshold"):
        fit(loss, {"k": 100.0}, energy=harmonic, sampler=sampler, kT=KT, optimizer=optax.adam(1.0),
            n_iterations=1, ess_threshold=1.5)


@pytest.mark.slow
def test_fit_torsion_example_quick():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "fit_torsion.py"), "--quick"],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recovered" in out.stdout
