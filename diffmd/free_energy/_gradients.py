"""Gradients of free energies by the end-state identity.

For states 0 and 1 of one energy function with parameters theta (force-field tables,
charges, neural-network weights: any pytree leaf both states share)::

    d(F_1 - F_0)/dtheta = <dU_1/dtheta>_1 - <dU_0/dtheta>_0

where <.>_k averages over samples of state k: the frames simulated there, or every frame of
a set of windows with MBAR's weights for state k (``MBARResult.weights(k)``), which is the
better estimate when an end state's own samples are few. For a thermodynamic cycle, add the
legs' gradients with their signs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError, SimulationError
from ..kernels.neighbors import is_table, update_neighbor_tables


def _frames(positions, weights, box):
    x = np.asarray(positions, np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise InputError(f"positions must be (frames, atoms, 3) [nm], got shape {x.shape}")
    n_frames = x.shape[0]
    if weights is None:
        w = np.full(n_frames, 1.0 / n_frames)
    else:
        w = np.asarray(weights, np.float64).reshape(-1)
        if w.shape != (n_frames,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise InputError(f"weights must be {n_frames} non-negative finite numbers, one per frame, not all zero")
        w = w / w.sum()
    if box is not None:
        box = np.asarray(box, np.float64)
        if box.shape == (3, 3):
            box = np.broadcast_to(box, (n_frames, 3, 3))
        if box.shape != (n_frames, 3, 3):
            raise InputError(f"box must be None, (3, 3) or ({n_frames}, 3, 3) [nm], got shape {box.shape}")
    return x, w, box


def ensemble_average_gradient(energy_fn, params, positions, weights=None, *, box=None, neighbors=None):
    """Weighted average of dU/dparams over frames: <dU/dtheta> [kJ/mol per unit of each leaf].

    Args:
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``.
        params: the parameter pytree (every leaf floating point).
        positions: (S, N, 3) frames [nm].
        weights: (S,) non-negative weights (normalized here), or None for a plain mean.
        box: None, one (3, 3) box or (S, 3, 3) boxes [nm].
        neighbors: None, or the model's table (``energy_fn.neighbor_list(positions[0], box)``;
            a tuple for summed models); refreshed for every frame (``update_neighbor_tables``).

    Returns:
        A pytree shaped like ``params``.

    Raises:
        InputError: shapes or weights. SimulationError: a frame overflowed the neighbor table
            (allocate it with a larger ``margin``).
    """
    x, w, boxes = _frames(positions, weights, box)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)

    @jax.jit
    def average(params, x, w, boxes):
        def frame(carry, item):
            total, overflow = carry
            xs, ws, bs = item
            nb = None if neighbors is None else update_neighbor_tables(neighbors, xs, bs)
            g = jax.grad(energy_fn)(params, xs, bs, nb)
            total = jax.tree_util.tree_map(lambda t, gi: t + (ws * gi).astype(t.dtype), total, g)
            for table in jax.tree_util.tree_leaves(nb, is_leaf=is_table):
                if is_table(table):
                    overflow = overflow | table.overflow
            return (total, overflow), None

        (total, overflow), _ = jax.lax.scan(frame, (zero, jnp.asarray(False)), (x, w, boxes))
        return total, overflow

    boxes_j = None if boxes is None else jnp.asarray(boxes)
    total, overflow = average(params, jnp.asarray(x, dtype), jnp.asarray(w, dtype), boxes_j)
    if bool(overflow):
        raise SimulationError("a frame needed more neighbor-table room than allocated: pass a table with a larger "
                              "margin, energy_fn.neighbor_list(positions[0], box, margin=2.0)")
    return total


def free_energy_gradient(energy_fn, params_start, params_end, positions_start, positions_end, *,
                         weights_start=None, weights_end=None, box_start=None, box_end=None, neighbors=None):
    """d(F_end - F_start)/dtheta = <dU_end/dtheta>_end - <dU_start/dtheta>_start [kJ/mol per unit].

    The two states are the same ``energy_fn`` at two parameter pytrees of one structure (e.g.
    ``AlchemicalParams`` at lambda 1 and lambda 0). Entries of the result are meaningful for
    the leaves both states share (charges, LJ tables, torsions, network weights); for leaves
    that differ between the states (the lambdas) they are just the difference of averages.

    Args:
        energy_fn: the energy function.
        params_start, params_end: the two states' parameters.
        positions_start, positions_end: (S, N, 3) frames [nm] whose (weighted) distribution is
            each state's: its own samples, or all frames of a run with MBAR weights for the state.
        weights_start, weights_end: (S,) weights or None (plain means).
        box_start, box_end: None, (3, 3) or (S, 3, 3) [nm].
        neighbors: None or the model's table, refreshed per frame.

    Returns:
        A pytree shaped like the params.

    Example:
        >>> result = diffmd.free_energy.mbar(u_kn, n_k)
        >>> grad = free_energy_gradient(fn, params_at(1.0), params_at(0.0), frames, frames,
        ...                             weights_start=result.weights(0), weights_end=result.weights(-1))
    """
    if jax.tree_util.tree_structure(params_start) != jax.tree_util.tree_structure(params_end):
        raise InputError("params_start and params_end must be one pytree structure (the same model at two states)")
    end = ensemble_average_gradient(energy_fn, params_end, positions_end, weights_end, box=box_end,
                                    neighbors=neighbors)
    start = ensemble_average_gradient(energy_fn, params_start, positions_start, weights_start, box=box_start,
                                      neighbors=neighbors)
    return jax.tree_util.tree_map(jnp.subtract, end, start)
