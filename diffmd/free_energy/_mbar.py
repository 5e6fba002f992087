"""MBAR in JAX: free energies, their asymptotic covariance and the overlap matrix.

The multistate Bennett acceptance ratio (Shirts and Chodera 2008) estimates the reduced
free energies f_k of K states from the reduced energies u_kn = u_k(x_n) of every sample
x_n (N of them, N_k drawn from state k) evaluated in every state::

    f_i = -ln sum_n exp(-u_in) / sum_k N_k exp(f_k - u_kn)

Solver: self-consistent iterations to get close, then Newton's method on the convex
objective sum_n ln sum_k N_k exp(f_k - u_kn) - sum_k N_k f_k (f_0 = 0 held fixed), with a
backtracking line search, in log space and float64. States without samples are
evaluated from the converged sampled ones. The uncertainty is pymbar's default ("svd-ew",
Shirts and Chodera 2008, appendix D): with the weight matrix W_nk = exp(f_k - u_kn) /
sum_j N_j exp(f_j - u_jn) and its eigendecomposition W'W = V S^2 V'::

    Theta = V S pinv(I - S V' diag(N_k) V S) S V',   d(f_j - f_i)^2 = Theta_ii + Theta_jj - 2 Theta_ij

and the overlap matrix O_ij = N_j sum_n W_ni W_nj (row i: where state i's samples would go).

The solve runs under ``jit`` with a ``while_loop`` and is not differentiated; gradients of
free energies come from ``free_energy_gradient`` (the end-state identity).

Reference:
    Shirts, Chodera, J. Chem. Phys. 129, 124105 (2008).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ..kernels.errors import InputError, SimulationError


@dataclasses.dataclass(frozen=True)
class MBARResult:
    """MBAR estimates (host numpy, float64, reduced units: multiply by kT for kJ/mol).

    Attributes:
        free_energies: (K,) f_k - f_0.
        differences: (K, K) f_j - f_i (row i, column j), as pymbar's ``Delta_f``.
        uncertainties: (K, K) one standard deviation of ``differences``.
        covariance: (K, K) the asymptotic covariance Theta of the f_k.
        overlap: (K, K) overlap matrix.
        log_weights: (N, K) ln W_nk; ``exp(log_weights[:, k])`` are the normalized weights of
            every sample in state k (for averages in state k).
        iterations: Newton iterations taken.
    """

    free_energies: np.ndarray
    differences: np.ndarray
    uncertainties: np.ndarray
    covariance: np.ndarray
    overlap: np.ndarray
    log_weights: np.ndarray
    iterations: int

    def weights(self, state: int) -> np.ndarray:
        """(N,) normalized weights of all samples in ``state`` (they sum to 1)."""
        return np.exp(self.log_weights[:, state])


def _log_denominator(f, u, log_n):
    """ln sum_k N_k exp(f_k - u_kn), (N,)."""
    return logsumexp(log_n[:, None] + f[:, None] - u, axis=0)


def _self_consistent(f, u, log_n):
    f = -logsumexp(-u - _log_denominator(f, u, log_n)[None, :], axis=1)
    return f - f[0]


@functools.partial(jax.jit, static_argnames=("max_iterations", "self_consistent_iterations"))
def _solve(u, n_k, tolerance, max_iterations: int, self_consistent_iterations: int):
    """f (K,) of the sampled states (u: (K, N), every n_k > 0) and the Newton iteration count."""
    log_n = jnp.log(n_k)
    n_total = jnp.sum(n_k)

    def objective(f):
        return jnp.sum(_log_denominator(f, u, log_n)) - jnp.dot(n_k, f)

    f = jax.lax.fori_loop(0, self_consistent_iterations, lambda _, f: _self_consistent(f, u, log_n),
                          jnp.zeros(u.shape[0], u.dtype))

    def gradient_and_hessian(f):
        # N_k W_nk: the share of sample n that state k's term takes in the denominator
        share = jnp.exp(log_n[:, None] + f[:, None] - u - _log_denominator(f, u, log_n)[None, :])  # (K, N)
        g = jnp.sum(share, axis=1) - n_k
        h = jnp.diag(jnp.sum(share, axis=1)) - share @ share.T
        return g, h

    def not_done(state):
        f, it, gnorm = state
        return (it < max_iterations) & (gnorm > tolerance)

    def newton(state):
        f, it, _ = state
        g, h = gradient_and_hessian(f)
        # states identical on every sample (e.g. a flat-bottom restraint switched on where it is
        # flat) make the Hessian singular: then the pseudo-inverse step (the gradient lies in its range)
        solved = jnp.linalg.solve(h[1:, 1:], -g[1:])
        pseudo = jnp.linalg.pinv(h[1:, 1:], rtol=1e-12, hermitian=True) @ -g[1:]
        step = jnp.concatenate([jnp.zeros(1, f.dtype), jnp.where(jnp.all(jnp.isfinite(solved)), solved, pseudo)])
        f0 = objective(f)

        def shrink(s):
            t, _ = s
            return t * 0.5, objective(f + 0.5 * t * step)

        def worse(s):
            t, value = s
            return (value > f0) & (t > 1e-8)

        t, _ = jax.lax.while_loop(worse, shrink, (1.0, objective(f + step)))
        f = f + t * step
        g, _ = gradient_and_hessian(f)
        return f, it + 1, jnp.max(jnp.abs(g)) / n_total

    g, _ = gradient_and_hessian(f)
    f, it, gnorm = jax.lax.while_loop(not_done, newton, (f, 0, jnp.max(jnp.abs(g)) / n_total))
    return f, it, gnorm


@jax.jit
def _statistics(f_sampled, u_all, u_sampled, n_all, n_sampled):
    """f of all states, ln W (N, K), Theta and the overlap matrix."""
    log_denominator = _log_denominator(f_sampled, u_sampled, jnp.log(n_sampled))
    f = -logsumexp(-u_all - log_denominator[None, :], axis=1)
    f = f - f[0]
    log_w = (f[:, None] - u_all - log_denominator[None, :]).T  # (N, K)
    w = jnp.exp(log_w)
    s2, v = jnp.linalg.eigh(w.T @ w)
    sigma = jnp.diag(jnp.sqrt(jnp.maximum(s2, 0.0)))
    k = f.shape[0]
    inner = jnp.eye(k, dtype=w.dtype) - sigma @ v.T @ jnp.diag(n_all) @ v @ sigma
    theta = v @ sigma @ jnp.linalg.pinv(inner, rtol=1e-10, hermitian=True) @ sigma @ v.T
    overlap = n_all[None, :] * (w.T @ w)
    return f, log_w, theta, overlap


def mbar(u_kn, n_k, *, tolerance: float = 1e-12, max_iterations: int = 200,
         self_consistent_iterations: int = 20) -> MBARResult:
    """Solve MBAR for K states (host in, host out; float64).

    Args:
        u_kn: (K, N) reduced energies [kT] of all N samples in all K states
            (u = U / kT, plus p V / kT for NPT).
        n_k: (K,) samples drawn from each state (0 for states only evaluated); sum = N.
        tolerance: convergence of max_k |N_k - sum_n N_k W_nk| / N.
        max_iterations: Newton iterations at most.
        self_consistent_iterations: self-consistent iterations before Newton.

    Returns:
        ``MBARResult``.

    Raises:
        InputError: shapes, counts that do not add up to N, non-finite energies, x64 off.
        SimulationError: the solver did not converge.

    Example:
        >>> result = mbar(u_kn, [1000, 1000, 1000])
        >>> df, ddf = result.differences[0, -1], result.uncertainties[0, -1]   # [kT]
    """
    if not jax.config.read("jax_enable_x64"):
        raise InputError('MBAR runs in float64: call jax.config.update("jax_enable_x64", True) at start-up')
    u = np.asarray(u_kn, np.float64)
    n = np.asarray(n_k)
    if u.ndim != 2:
        raise InputError(f"u_kn must be a (K, N) array of reduced energies, got shape {u.shape}")
    if n.shape != (u.shape[0],) or not np.all(n == np.round(n)):
        raise InputError(f"n_k must be {u.shape[0]} whole sample counts, one per state, got {n_k!r}")
    n = n.astype(np.float64)
    if np.any(n < 0) or n.sum() != u.shape[1]:
        raise InputError(f"n_k must be non-negative and add up to the {u.shape[1]} samples, got sum {n.sum():.0f}")
    if not np.all(np.isfinite(u)):
        bad = np.argwhere(~np.isfinite(u))[0]
        raise InputError(f"u_kn holds NaN or Inf (first at state {bad[0]}, sample {bad[1]}): evaluate every "
                         "sample in every state, with finite energies")
    sampled = np.flatnonzero(n > 0)  # the solve fixes the first of them; f is re-zeroed on state 0 after
    f_s, iterations, gnorm = _solve(jnp.asarray(u[sampled]), jnp.asarray(n[sampled]), tolerance, max_iterations,
                                    self_consistent_iterations)
    if not float(gnorm) <= tolerance:
        raise SimulationError(f"MBAR did not converge in {max_iterations} Newton iterations (gradient "
                              f"{float(gnorm):.2e} > {tolerance:.0e}): states may not overlap; add intermediate "
                              "states or samples")
    f, log_w, theta, overlap = (np.asarray(a) for a in _statistics(
        f_s, jnp.asarray(u), jnp.asarray(u[sampled]), jnp.asarray(n), jnp.asarray(n[sampled])))
    diag = np.diag(theta)
    variance = diag[:, None] + diag[None, :] - 2.0 * theta
    return MBARResult(free_energies=f, differences=f[None, :] - f[:, None],
                      uncertainties=np.sqrt(np.maximum(variance, 0.0)), covariance=theta, overlap=overlap,
                      log_weights=log_w, iterations=int(iterations))
