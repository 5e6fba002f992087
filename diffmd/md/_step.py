"""The one MD step of every run: a pure per-member step that single runs scan and ensembles vmap.

``member_step`` advances one member (one system's ``Carry``) by one step:

1. the integrator's step (constraints included) with forces from ``energy_fn`` at the
   member's box (the barostat's box under NPT);
2. neighbor-table upkeep: a table rebuilt when some atom moved more than half its skin, and
   then the forces recomputed with the new table, so every force is evaluated with tables
   valid for its positions (as OpenMM's rebuild-before-forces);
3. under NPT, after every step k with ``k % frequency == 0``, one Monte Carlo volume move
   (``apply_barostat``) keyed by ``fold_in(barostat_key, k)``.

A single run (``make_chunk``) scans it as it is: each table is rebuilt on its own when it
moved. An ensemble (``diffmd.ensemble``) ``vmap``s the same function over the member axis
with ``lockstep`` naming that axis: then the rebuild decision is reduced over the members
(``lax.pmax``), so every member's tables are rebuilt together when any member needs it (a
fresh table is valid for every member) and the ``lax.cond`` stays a branch rather than
turning into a select that would rebuild on every step; the barostat's step test is reduced
the same way, so the trial energies are computed only on the steps with a move. Each member
keeps its own box, barostat statistics (acceptance counts, adapted step size) and keys.

Positions [nm], boxes (3, 3) [nm], energies [kJ/mol].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ._barostat import apply_barostat
from ._integrators import kinetic_energy, make_force_fn
from ._tables import update_tables
from ..kernels.neighbors import is_table, neighbors_moved, rebuild_neighbors

#: name of the member axis of an ensemble's ``vmap`` (the axis lockstep decisions reduce over)
MEMBER_AXIS = "members"


def _refresh(energy_fn, params, box, neighbors):
    """``state -> state`` with the energy and forces recomputed with ``neighbors``."""
    def refresh(s):
        e, f = make_force_fn(energy_fn, params, box, neighbors)(s.positions)
        return dataclasses.replace(s, forces=f.astype(s.forces.dtype),
                                   potential_energy=e.astype(s.potential_energy.dtype))

    return refresh


def _any_member(flag, lockstep):
    """``flag`` or'ed over the member axis ``lockstep`` (as it is when None)."""
    return flag if lockstep is None else jax.lax.pmax(flag, lockstep)


def _upkeep(energy_fn, params, box, state, neighbors, lockstep, mask_table):
    """Rebuild the tables that need it and recompute the forces with them."""
    if neighbors is None:
        return state, neighbors
    movable = [t for t in jax.tree_util.tree_leaves(neighbors, is_leaf=is_table) if not t.dense]
    if not movable:
        return state, neighbors
    if lockstep is None:
        # one member: each table rebuilds when its own atoms moved
        new, rebuilt = update_tables(neighbors, state.positions, box)
        return jax.lax.cond(rebuilt, _refresh(energy_fn, params, box, new), lambda s: s, state), new
    # members in lockstep: every movable table of every member is rebuilt when any needs it
    moved = functools.reduce(jnp.logical_or, [neighbors_moved(t, state.positions, box) for t in movable])

    def rebuild(t):
        if t.dense:
            return t
        t = rebuild_neighbors(t, state.positions, box)
        return t if mask_table is None else mask_table(t)

    def rebuild_all(args):
        s, n = args
        n = jax.tree_util.tree_map(rebuild, n, is_leaf=is_table)
        return _refresh(energy_fn, params, box, n)(s), n

    return jax.lax.cond(_any_member(moved, lockstep), rebuild_all, lambda a: a, (state, neighbors))


def member_step(integrator, energy_fn, carry, params, box=None, constraints=None, *, lockstep: str | None = None,
                mask_table: Callable | None = None):
    """One step of one member (pure; see the module docstring for what it does).

    Args:
        integrator: an ``Integrator`` (``diffmd.md``).
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``.
        carry: the member's ``Carry`` (state, neighbor table(s), barostat and its key).
        params: the energy model's parameters.
        box: (3, 3) box [nm] or None; ignored when ``carry`` holds a barostat (its box is used).
        constraints: a ``Constraints`` set or None.
        lockstep: None for a lone member; under ``vmap(..., axis_name=NAME)`` the axis
            ``NAME`` over which neighbor rebuilds and barostat steps are decided together.
        mask_table: applied to every table rebuilt in lockstep (an ensemble keeps padding
            atoms out of its tables with it), or None.

    Returns:
        ``(carry, observables)``: ``potential_energy`` and ``kinetic_energy`` [kJ/mol]
        after the step, and ``volume`` [nm^3] with a barostat.
    """
    st, nb, bs = carry.state, carry.neighbors, carry.barostat
    cur_box = carry.current_box(box)
    st = integrator.step(st, make_force_fn(energy_fn, params, cur_box, nb), constraints, cur_box)
    st, nb = _upkeep(energy_fn, params, cur_box, st, nb, lockstep, mask_table)
    obs = {}
    if bs is not None and bs.frequency > 0:
        def move(args):
            b, s, n = args
            key = jax.random.fold_in(carry.barostat_key, s.step)
            b, s, n, _ = apply_barostat(b, key, s, energy_fn, params, n)
            return b, s, n

        due = _any_member(st.step % bs.frequency == 0, lockstep)
        bs, st, nb = jax.lax.cond(due, move, lambda a: a, (bs, st, nb))
        obs["volume"] = bs.volume
    obs["potential_energy"] = st.potential_energy
    obs["kinetic_energy"] = kinetic_energy(st.velocities, st.masses)
    return dataclasses.replace(carry, state=st, neighbors=nb, barostat=bs), obs
