"""DiffTRe-style reweighting: gradients of ensemble averages from stored frames.

Frames ``x_i`` sampled at reference parameters ``theta0`` (with energies
``U_theta0(x_i)``) estimate an average at nearby parameters ``theta`` by importance
weights (Zwanzig; Thaler & Zavadlav, "Learning neural network potentials from
experimental data via Differentiable Trajectory Reweighting", Nat. Commun. 12, 6884
(2021)):

    w_i = exp(-(U_theta(x_i) - U_theta0(x_i)) / kT) / sum_j exp(...)
    <O>_theta ~ sum_i w_i O(x_i)

Only the weights depend on ``theta`` (through the energy of fixed frames), so
``jax.grad`` of any loss of reweighted averages costs one batched energy gradient per
frame, never a backward pass through the dynamics. The estimate degrades as ``theta``
leaves ``theta0``; the effective sample size ``n_eff / n = (sum w)^2 / (n sum w^2)``
measures how much, and :func:`fit` re-samples (runs the simulation at the current
``theta``) when it drops below a threshold.

The threshold defaults to 0.9, the value DiffTRe used: at ``n_eff / n >= 0.9`` the
reweighted averages and gradients stay close to those of a fresh sample, while a
sample is reused for several optimizer steps. Lower values re-sample less often and
trade accuracy of the gradient for simulation time.

An energy here is a function of parameters and one frame only,
``energy(theta, positions) -> kJ/mol``: close over the box and a neighbor table that
covers every frame (a dense table, or one allocated with enough skin), and map
``theta`` into the force field's parameters (for instance set one torsion's force
constant) inside it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
import optax  # the training dependency, imported where it is used

__all__ = ["ReferenceSample", "FitResult", "frame_energies", "reference_sample", "reweighting_weights",
           "effective_sample_size", "reweighted_mean", "fit"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReferenceSample:
    """Frames and their energies at the parameters that sampled them.

    Attributes:
        theta: the reference parameters ``theta0`` (any pytree).
        frames: (n, N, 3) positions [nm].
        energies: (n,) ``U_theta0`` of each frame [kJ/mol].
    """

    theta: Any
    frames: jax.Array
    energies: jax.Array


def frame_energies(energy: Callable, theta, frames, batch_size: int | None = None) -> jax.Array:
    """``energy(theta, x)`` for every frame: (n,) [kJ/mol].

    Args:
        energy: ``energy(theta, positions (N, 3)) -> kJ/mol``.
        theta: parameters (differentiable).
        frames: (n, N, 3) [nm].
        batch_size: frames evaluated at once (``lax.map`` batches; None: all, by
            ``vmap``). Smaller batches bound memory for large systems.
    """
    if batch_size is None:
        return jax.vmap(lambda x: energy(theta, x))(frames)
    return jax.lax.map(lambda x: energy(theta, x), frames, batch_size=int(batch_size))


_frame_energies_jit = jax.jit(frame_energies, static_argnums=(0, 3))


def reference_sample(energy: Callable, theta, frames, batch_size: int | None = None) -> ReferenceSample:
    """A ``ReferenceSample`` of ``frames`` sampled at ``theta`` (energies computed here)."""
    frames = jnp.asarray(frames)
    if frames.ndim != 3 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"frames must have shape (n_frames, n_atoms, 3), got {tuple(frames.shape)}")
    theta = jax.tree_util.tree_map(jnp.asarray, theta)
    return ReferenceSample(theta, frames, _frame_energies_jit(energy, theta, frames, batch_size))


def reweighting_weights(energy: Callable, theta, sample: ReferenceSample, kT, batch_size: int | None = None):
    """Normalized importance weights (n,) of ``sample``'s frames at ``theta``.

    ``w_i ∝ exp(-(U_theta(x_i) - U_theta0(x_i)) / kT)``, computed as a softmax (no
    overflow whatever the energy offset). Uniform at ``theta = theta0``.

    Args:
        energy: ``energy(theta, positions) -> kJ/mol``.
        theta: the parameters to reweight to.
        sample: frames and reference energies.
        kT: thermal energy [kJ/mol] (``BOLTZMANN * T``) of the sampled ensemble.
        batch_size: see :func:`frame_energies`.
    """
    u = frame_energies(energy, theta, sample.frames, batch_size)
    return jax.nn.softmax(-(u - sample.energies) / kT)


def effective_sample_size(weights) -> jax.Array:
    """Kish's effective sample size as a fraction: ``(sum w)^2 / (n sum w^2)`` in (0, 1]."""
    weights = jnp.asarray(weights)
    return jnp.sum(weights) ** 2 / (weights.shape[0] * jnp.sum(weights**2))


def reweighted_mean(weights, values) -> jax.Array:
    """``sum_i w_i O_i`` over the leading axis (``weights`` normalized, ``values`` (n, ...))."""
    weights = jnp.asarray(weights)
    values = jnp.asarray(values)
    return jnp.tensordot(weights, values, axes=(0, 0)) / jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        theta: the final parameters.
        history: one dict per iteration: ``iteration``, ``loss``, ``ess`` (``n_eff / n``
            before the step), ``resampled`` (a new sample was drawn this iteration)
            and ``seconds`` since the start.
        samples: how many times the sampler ran (the first sample included).
    """

    theta: Any
    history: list
    samples: int


def fit(loss: Callable, theta, *, energy: Callable, sampler: Callable, kT: float, optimizer,
        n_iterations: int, ess_threshold: float = 0.9, batch_size: int | None = None,
        callback: Callable[[int, Any, dict], None] | None = None) -> FitResult:
    """Minimize a loss of reweighted ensemble averages, re-sampling when the weights degrade.

    Each iteration: if the effective sample size of the current sample at ``theta``
    is below ``ess_threshold`` (or there is no sample yet), run ``sampler(theta)``
    and make that the reference sample; then take one optimizer step along
    ``grad loss(weights(theta), frames, theta)``.

    Args:
        loss: ``loss(weights (n,), frames (n, N, 3), theta) -> scalar``; build ensemble
            averages with ``reweighted_mean(weights, O(frames))``.
        theta: starting parameters (a pytree of float arrays).
        energy: ``energy(theta, positions) -> kJ/mol`` (see the module docstring).
        sampler: ``sampler(theta) -> frames (n, N, 3)`` [nm], a simulation at ``theta``
            (host code: it may jit, run chunks, keep its own state between calls).
            Frame count must stay the same between calls.
        kT: thermal energy of the sampled ensemble [kJ/mol].
        optimizer: an ``optax.GradientTransformation``.
        n_iterations: optimizer steps.
        ess_threshold: re-sample below this ``n_eff / n`` (0 < threshold <= 1).
        batch_size: frames per energy batch (see :func:`frame_energies`).
        callback: ``callback(iteration, theta, record)`` after each step (logging).

    Returns:
        ``FitResult``.
    """
    if not 0.0 < ess_threshold <= 1.0:
        raise InputError(f"ess_threshold must be in (0, 1], got {ess_threshold!r}")
    if int(n_iterations) != n_iterations or n_iterations < 0:
        raise InputError(f"n_iterations must be a non-negative integer, got {n_iterations!r}")
    theta = jax.tree_util.tree_map(jnp.asarray, theta)
    opt_state = optimizer.init(theta)

    @jax.jit
    def ess_at(theta, sample):
        return effective_sample_size(reweighting_weights(energy, theta, sample, kT, batch_size))

    @jax.jit
    def step(theta, opt_state, sample):
        def objective(t):
            return loss(reweighting_weights(energy, t, sample, kT, batch_size), sample.frames, t)

        value, grads = jax.value_and_grad(objective)(theta)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, value

    sample, samples, history, start = None, 0, [], time.perf_counter()
    for it in range(int(n_iterations)):
        ess = 0.0 if sample is None else float(ess_at(theta, sample))
        resampled = sample is None or ess < ess_threshold
        if resampled:
            sample = reference_sample(energy, theta, np.asarray(sampler(theta)), batch_size)
            samples += 1
            ess = 1.0
        new_theta, opt_state, value = step(theta, opt_state, sample)
        record = {"iteration": it, "loss": float(value), "ess": ess, "resampled": resampled,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        theta = new_theta
        if callback is not None:
            callback(it, theta, record)
    return FitResult(theta, history, samples)
