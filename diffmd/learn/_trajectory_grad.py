"""Gradients through simulation: a trajectory as a differentiable function of the parameters.

    traj = make_trajectory_fn(prep.integrator, prep.energy_fn, 4096, observable=my_obs)

    def loss(params):
        _, obs = traj(prep.carry, params, prep.box, prep.constraints)
        return jnp.mean(obs["potential_energy"])

    value, grads = jax.jit(jax.value_and_grad(loss))(prep.params)

Reverse-mode differentiation of ``n`` steps normally keeps every step's intermediates
for the backward pass, so memory grows as ``n``. Here the steps run as a scan over
*segments*, each segment a scan over steps wrapped in ``jax.checkpoint``: the backward
pass keeps only the carry at each segment boundary and recomputes the steps inside one
segment while it goes back through it (Griewank's "checkpointing", one level). With
``n / L`` segments of ``L`` steps the stored state is about ``n / L + L`` carries, least
near ``L = sqrt(n)`` (the default), at the price of one more forward pass. Inside a segment each
step is checkpointed too (``checkpoint_steps``), so the replay of a segment keeps one
carry per step and the intermediates of a single step: memory is about
``(n / L + L)`` carries plus one step's intermediates, and a gradient costs about four
forward simulations.

The step is ``diffmd.md.make_chunk``'s, the one production runs use (neighbor
rebuilds, constraints with their implicit gradients, a barostat in the carry), so the
gradient is that of the very trajectory a user would simulate. Stochastic integrators
draw their noise from the key in the state, so with a fixed starting key a trajectory is
a deterministic (and differentiable) function of the parameters; the gradient is the
pathwise derivative for that noise realisation.

A neighbor table that overflows anywhere in the trajectory sets
``carry.neighbors.overflow`` in the returned carry; values and gradients are then
invalid: allocate a larger table (``diffmd.md.reallocate``) and call again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..md import Carry, make_chunk
from ..md import make_force_fn
from ..kernels.errors import InputError

__all__ = ["default_segment_length", "make_trajectory_fn", "refresh_forces"]


def default_segment_length(n_records: int) -> int:
    """Records per checkpointed segment that minimise stored state: ``round(sqrt(n_records))``."""
    return max(1, int(round(math.sqrt(int(n_records)))))


def refresh_forces(carry: Carry, energy_fn, params, box=None) -> Carry:
    """``carry`` with its forces and potential energy recomputed from ``params``.

    A state built with other parameters (say ``prepare``'s) holds forces that do not
    depend on the ``params`` being differentiated; the first step would use them
    and the gradient would miss that path. Recomputing them makes the whole
    trajectory a function of ``params``.
    """
    st = carry.state
    energy, forces = make_force_fn(energy_fn, params, carry.current_box(box), carry.neighbors)(st.positions)
    st = dataclasses.replace(st, forces=forces.astype(st.forces.dtype),
                             potential_energy=energy.astype(st.potential_energy.dtype))
    return dataclasses.replace(carry, state=st)


def make_trajectory_fn(integrator, energy_fn, n_steps: int, *, segment_length: int | None = None,
                       every: int = 1, observable: Callable[[Any], Any] | None = None,
                       checkpoint: bool = True, checkpoint_steps: bool = True,
                       refresh: bool = True) -> Callable:
    """A pure, differentiable function that runs ``n_steps`` steps and returns observables.

    Args:
        integrator: an ``Integrator`` (``diffmd.md``).
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``.
        n_steps: steps to take (static).
        segment_length: records (groups of ``every`` steps) per checkpointed segment;
            default ``round(sqrt(n_steps / every))``. Static.
        every: steps between records; observables are taken after every
            ``every``-th step. Must divide ``n_steps``. Static.
        observable: ``observable(state) -> array or dict of arrays``, evaluated on the
            integrator state (``state.positions`` (N, 3) [nm], ``state.velocities``,
            ``state.forces``, ``state.potential_energy``) at each record; a dict is
            merged into the observables, anything else is stored under
            ``"observable"``. None: only the energies.
        checkpoint: wrap each segment in ``jax.checkpoint`` (False gives the plain,
            memory-hungry gradient with the same values; for comparison).
        checkpoint_steps: with ``checkpoint``, also wrap each record (``every``
            steps) inside a segment, so that replaying a segment in the backward
            pass stores one carry per record and the intermediates of one record at
            a time, not those of a whole segment. For proteins a step's
            intermediates (pair tables) weigh far more than a carry, and without
            this they dominate memory; it costs one more forward evaluation of each
            step (a gradient then costs about four forward simulations, not three).
        refresh: recompute the starting forces from ``params`` (see
            :func:`refresh_forces`); leave True unless the carry's forces were
            already computed from the same traced ``params``.

    Returns:
        ``trajectory(carry, params, box=None, constraints=None) -> (carry,
        observables)`` with ``observables`` a dict of arrays with leading axis
        ``n_steps // every``: ``potential_energy`` and ``kinetic_energy`` [kJ/mol]
        (``volume`` [nm^3] with a barostat) plus those of ``observable``. ``jit``,
        ``grad`` (with respect to ``params``, and to ``carry``'s float leaves) and
        ``vmap`` apply.

    Raises:
        InputError: ``n_steps``, ``every`` or ``segment_length`` out of range.
    """
    for name, value in (("n_steps", n_steps), ("every", every)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    n_steps, every = int(n_steps), int(every)
    if n_steps % every:
        raise InputError(f"every={every} must divide n_steps={n_steps} (observables are recorded every "
                         f"{every} steps)")
    n_records = n_steps // every
    if segment_length is None:
        segment_length = default_segment_length(n_records)
    if isinstance(segment_length, bool) or int(segment_length) != segment_length or segment_length < 1:
        raise InputError(f"segment_length must be a positive number of records, got {segment_length!r}")
    seg_len = min(int(segment_length), n_records)
    n_segments, remainder = divmod(n_records, seg_len)
    steps_between = make_chunk(integrator, energy_fn, every)

    def record(carry, params, box, constraints):
        carry, obs = steps_between(carry, params, box, constraints)
        out = {k: v[-1] for k, v in obs.items()}  # the values after the record's last step
        if observable is not None:
            extra = observable(carry.state)
            out.update(extra if isinstance(extra, dict) else {"observable": extra})
        return carry, out

    inner = jax.checkpoint(record) if checkpoint and checkpoint_steps else record

    def segment(carry, params, box, constraints, length):
        return jax.lax.scan(lambda c, _: inner(c, params, box, constraints), carry, None, length=length)

    def wrap(length):
        fn = functools.partial(segment, length=length)
        # the default policy saves nothing inside: the backward pass keeps the segment's
        # input carry and replays the segment forward, one segment at a time
        return jax.checkpoint(fn) if checkpoint else fn

    full, tail = wrap(seg_len), wrap(remainder) if remainder else None

    def trajectory(carry: Carry, params, box=None, constraints=None):
        if refresh:
            carry = refresh_forces(carry, energy_fn, params, box)
        carry, obs = jax.lax.scan(lambda c, _: full(c, params, box, constraints), carry, None,
                                  length=n_segments)
        obs = jax.tree_util.tree_map(lambda a: a.reshape((n_segments * seg_len,) + a.shape[2:]), obs)
        if tail is not None:
            carry, rest = tail(carry, params, box, constraints)
            obs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), obs, rest)
        return carry, obs

    return trajectory
