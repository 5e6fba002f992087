"""Monte Carlo barostat (NPT), as OpenMM's MonteCarloBarostat and MonteCarloAnisotropicBarostat.

Every ``frequency`` steps the runner calls ``barostat_step`` (or
``apply_barostat`` with an integrator state). One move:

1. Draw dV uniform in [-dv_max, dv_max) and set V' = V + dV (isotropic), or
   pick one of the scaled axes at random and change only that box length
   (anisotropic).
2. Scale the box, and move every molecule rigidly so that its centre is
   scaled with the box (molecular scaling: atoms keep their positions relative
   to their molecule's centre, so bonds and constraints stay as they are).
   Centres are geometric centres by default, as OpenMM's; ``center="mass"``
   uses centres of mass (any fixed centre gives a correct move).
3. Recompute the energy with a neighbor table updated for the new box (the PME
   grid and alpha stay fixed, as in OpenMM; the dispersion correction follows
   the volume through ``energy_fn``).
4. Accept with OpenMM's rule: with

       w = U' - U + P dV - N_mol kT ln(V'/V)

   accept if w <= 0, else with probability exp(-w / kT) (pressure P in bar,
   converted with ``BAR_NM3``; N_mol molecules). A non-finite w is rejected.
5. Adapt dv_max as OpenMM does: after 10 attempts (per axis), if fewer than
   25 % were accepted divide it by 1.1, if more than 75 % multiply it by 1.1
   (at most 0.3 V), then restart the count. Initial dv_max is 0.01 V.

Velocities are not changed (as in OpenMM). After an accepted move the forces
change: ``barostat_step`` returns the energy (and, when asked, the forces) of
the configuration it leaves, so the integrator state can be refreshed without
another evaluation (``apply_barostat`` does that).

Everything is a pure function of explicit arrays: ``jit`` and ``vmap`` go
through (one box per replica; under ``vmap`` the neighbor rebuild's
``lax.cond`` becomes a select). The neighbor table is taken and returned: the
trial table is rebuilt for the trial box, kept if the move is accepted, and the
old one is returned otherwise, with ``overflow`` and ``needed`` carried over
from the trial build either way, so a table that was too small for the trial
box is reported (the runner re-allocates and replays the chunk).

A move that would make a box width smaller than twice the neighbor table's
cutoff is rejected (OpenMM raises an error there instead).

Positions must keep molecules whole (unwrapped, as diffmd's integrators leave
them), since molecule centres are plain averages, as in OpenMM.

References:
    Chow and Ferguson, Comput. Phys. Commun. 91, 283 (1995); Aqvist et al.,
    Chem. Phys. Lett. 384, 288 (2004); OpenMM's MonteCarloBarostatImpl.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.constants import BAR_NM3, BOLTZMANN
from ..kernels.errors import InputError
from ..kernels.geometry import box_volume
from ..kernels.neighbors import is_table, update_neighbor_tables
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: OpenMM's adaptation: window of attempts, target acceptance band, step factor, cap (fraction of V).
_ADAPT_WINDOW = 10
_ADAPT_LOW, _ADAPT_HIGH, _ADAPT_FACTOR, _ADAPT_CAP = 0.25, 0.75, 1.1, 0.3
CENTERS = ("geometric", "mass")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["box", "dv_max", "attempts", "accepted", "total_attempts", "total_accepted", "pressure",
                 "temperature", "molecules", "center_weights", "n_molecules"],
    meta_fields=["frequency", "axes"],
)
@dataclasses.dataclass(frozen=True)
class BarostatState:
    """State of the Monte Carlo barostat.

    Isotropic barostats carry scalars in ``dv_max``, ``attempts``, ``accepted``
    and ``pressure``; anisotropic ones carry (3,) arrays, one entry per axis.

    Attributes:
        box: (3, 3) reduced box vectors [nm] (rows a, b, c).
        dv_max: largest volume change proposed [nm^3] (OpenMM's volumeScale).
        attempts: int32 moves attempted since dv_max was last adapted.
        accepted: int32 moves accepted since dv_max was last adapted.
        total_attempts: int32 moves attempted in all.
        total_accepted: int32 moves accepted in all.
        pressure: target pressure [bar] (per axis when anisotropic).
        temperature: temperature of the acceptance rule [K].
        molecules: (N,) int32 molecule of each atom, numbered 0..n-1
            (``molecule_index``).
        center_weights: (N,) weights of the molecule centres (1: geometric
            centre as OpenMM; masses: centre of mass).
        n_molecules: number of molecules in the ln(V'/V) term (float; padding
            atoms of an ensemble are left out of it).
        frequency: attempt a move every this many steps (static; for the
            runner, which calls ``barostat_step`` at that interval).
        axes: ``None`` (isotropic) or the tuple of axes (0 x, 1 y, 2 z) an
            anisotropic barostat scales (static; changing it recompiles).
    """

    box: jax.Array
    dv_max: jax.Array
    attempts: jax.Array
    accepted: jax.Array
    total_attempts: jax.Array
    total_accepted: jax.Array
    pressure: jax.Array
    temperature: jax.Array
    molecules: jax.Array
    center_weights: jax.Array
    n_molecules: jax.Array
    frequency: int = 25
    axes: tuple | None = None

    @property
    def volume(self):
        """Box volume [nm^3]."""
        return box_volume(self.box)

    @property
    def acceptance_rate(self):
        """Fraction of all attempted moves that were accepted."""
        return self.total_accepted / jnp.maximum(self.total_attempts, 1)


class BarostatStep(NamedTuple):
    """Outcome of one barostat move.

    Attributes:
        state: the updated ``BarostatState`` (new box if accepted, adapted dv_max).
        positions: (N, 3) positions [nm] after the move (scaled if accepted).
        neighbors: the neighbor table for ``positions`` and the returned box
            (or None when none was given).
        energy: potential energy [kJ/mol] at the returned configuration.
        forces: (N, 3) forces [kJ/mol/nm] there, or None when not asked for.
        accepted: bool, whether the move was accepted.
        delta_volume: the proposed volume change [nm^3].
        work: w of the acceptance rule [kJ/mol].
    """

    state: BarostatState
    positions: jax.Array
    neighbors: Any
    energy: jax.Array
    forces: Any
    accepted: jax.Array
    delta_volume: jax.Array
    work: jax.Array


def molecule_index(n_atoms: int, bonds) -> np.ndarray:
    """Molecule of each atom from the bond graph (host side).

    Molecules are the connected components of the bonds, numbered in order of
    their first atom (as OpenMM's ``Context.getMolecules``); an atom without
    bonds (an ion) is a molecule of its own. Pass every pair that keeps atoms
    together (bonds and constraints).

    Args:
        n_atoms: number of atoms.
        bonds: (B, 2) bonded atom pairs (0-based).

    Returns:
        (n_atoms,) int32 molecule indices 0..n_molecules-1.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n_atoms):
        raise InputError(f"bonds refer to atoms outside 0..{n_atoms - 1}: check the bond list")
    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms))
    _, labels = connected_components(graph, directed=False)
    # renumber by first appearance so molecule 0 holds atom 0
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[labels].astype(np.int32)


def barostat_init(box, molecules, *, pressure=1.0, temperature=300.0, frequency: int = 25,
                  anisotropic: bool = False, scale_axes=(True, True, True), center: str = "geometric",
                  masses=None, dv_max=None, n_molecules=None, dtype=None) -> BarostatState:
    """Set up a Monte Carlo barostat (validated on the host).

    Args:
        box: (3, 3) reduced box vectors [nm].
        molecules: (N,) molecule of each atom (``molecule_index``).
        pressure: target pressure [bar]; (3,) per axis for an anisotropic barostat.
        temperature: temperature [K] (the thermostat's).
        frequency: attempt a move every this many steps (OpenMM's default 25;
            static). 0 switches the barostat off in the runner.
        anisotropic: scale one axis at a time, as MonteCarloAnisotropicBarostat.
        scale_axes: which of x, y, z an anisotropic barostat may scale.
        center: ``"geometric"`` (OpenMM's molecule centres) or ``"mass"``.
        masses: (N,) [amu], needed for ``center="mass"``.
        dv_max: initial largest volume change [nm^3] (default 0.01 V, as OpenMM).
        n_molecules: molecules in the acceptance rule (default: all of ``molecules``).
        dtype: float dtype of the state (default: the box's).

    Returns:
        A ``BarostatState``.
    """
    box_np = np.asarray(box, dtype=np.float64)
    if box_np.shape != (3, 3) or not np.all(np.isfinite(box_np)) or np.prod(np.diag(box_np)) <= 0:
        raise InputError(f"box must be (3, 3) reduced box vectors [nm] with positive volume, got {box_np!r}")
    molecules = np.asarray(molecules)
    if molecules.ndim != 1 or not np.issubdtype(molecules.dtype, np.integer) or molecules.min() < 0:
        raise InputError("molecules must be (N,) non-negative molecule indices: use molecule_index(n_atoms, bonds)")
    if molecules.max() >= molecules.shape[0]:
        raise InputError("molecule indices must be below the number of atoms: use molecule_index(n_atoms, bonds)")
    if int(frequency) != frequency or frequency < 0:
        raise InputError(f"frequency must be a non-negative number of steps, got {frequency!r}")
    if center not in CENTERS:
        raise InputError(f"unknown center {center!r}: choose one of {', '.join(CENTERS)}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise InputError(f"temperature must be positive [K], got {temperature!r}")
    n_atoms = molecules.shape[0]
    if center == "mass":
        if masses is None:
            raise InputError("center='mass' needs masses=(N,) [amu]")
        weights = np.asarray(masses, np.float64)
        if weights.shape != (n_atoms,):
            raise InputError(f"masses must have shape ({n_atoms},), got {weights.shape}")
        total = np.bincount(molecules, weights, minlength=n_atoms)
        if np.any(total[np.unique(molecules)] <= 0):
            raise InputError("center='mass': a molecule has zero total mass; use center='geometric'")
    else:
        weights = np.ones(n_atoms)
    dtype = jnp.asarray(box).dtype if dtype is None else dtype
    if anisotropic:
        axes = tuple(i for i in range(3) if scale_axes[i])
        if not axes:
            raise InputError("anisotropic barostat with no axis to scale: set one of scale_axes True")
        shape = (3,)
    else:
        axes, shape = None, ()
    pressure = np.broadcast_to(np.asarray(pressure, np.float64), shape) if anisotropic else np.asarray(pressure)
    if pressure.shape != shape or not np.all(np.isfinite(pressure)):
        raise InputError(f"pressure must be a finite {'(3,) array' if anisotropic else 'scalar'} [bar]")
    volume = float(np.prod(np.diag(box_np)))
    dv = 0.01 * volume if dv_max is None else float(dv_max)
    if n_molecules is None:
        n_molecules = len(np.unique(molecules))
    return BarostatState(
        box=jnp.asarray(box, dtype),
        dv_max=jnp.full(shape, dv, dtype),
        attempts=jnp.zeros(shape, jnp.int32),
        accepted=jnp.zeros(shape, jnp.int32),
        total_attempts=jnp.zeros((), jnp.int32),
        total_accepted=jnp.zeros((), jnp.int32),
        pressure=jnp.asarray(pressure, dtype),
        temperature=jnp.asarray(temperature, dtype),
        molecules=jnp.asarray(molecules, jnp.int32),
        center_weights=jnp.asarray(weights, dtype),
        n_molecules=jnp.asarray(n_molecules, dtype),
        frequency=int(frequency),
        axes=axes,
    )


def scale_molecules(positions, molecules, center_weights, scale):
    """Move molecules rigidly so that their centres are multiplied by ``scale`` (per axis).

    Args:
        positions: (N, 3) [nm], molecules whole.
        molecules: (N,) int32 molecule of each atom.
        center_weights: (N,) weights of the centres (ones: geometric centres).
        scale: (3,) factors on x, y, z.

    Returns:
        (N, 3) positions [nm].
    """
    n = positions.shape[0]
    w = center_weights.astype(positions.dtype)
    total = jax.ops.segment_sum(w, molecules, num_segments=n)
    summed = jax.ops.segment_sum(w[:, None] * positions, molecules, num_segments=n)
    centers = summed / jnp.where(total > 0, total, 1.0)[:, None]
    return positions + (centers * (scale - 1.0)[None, :])[molecules]


def _pick(x, axis):
    return x if x.ndim == 0 else x[axis]


def _put(x, axis, value):
    return value if x.ndim == 0 else x.at[axis].set(value)


def barostat_step(state: BarostatState, key, positions, energy_fn, params, neighbors=None, *, energy=None,
                  forces=None) -> BarostatStep:
    """Propose and accept or reject one volume move (jit- and vmap-able).

    Args:
        state: the barostat state (its ``box`` is the current box).
        key: PRNG key for this move.
        positions: (N, 3) current positions [nm] (molecules whole).
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``
            (any closure ``energy(positions, box)`` fits as
            ``lambda params, x, box, nb: energy(x, box)``).
        params: the energy model's parameters.
        neighbors: the current neighbor table (``Neighbors``), a tuple of tables (a summed
            potential's), or None.
        energy: potential energy [kJ/mol] at ``positions`` if known (else computed).
        forces: (N, 3) forces at ``positions`` [kJ/mol/nm]. When given, the
            trial forces are computed too and the forces of the returned
            configuration come back in ``BarostatStep.forces``.

    Returns:
        ``BarostatStep`` (state, positions, neighbors, energy, forces, accepted,
        delta_volume, work).
    """
    box = state.box
    with_forces = forces is not None

    def evaluate(x, b, nb):
        if with_forces:
            e, g = jax.value_and_grad(energy_fn, argnums=1)(params, x, b, nb)
            return e, -g
        return energy_fn(params, x, b, nb), None

    if energy is None:
        energy, old_forces = evaluate(positions, box, neighbors)
        forces = old_forces if with_forces else None
    key_axis, key_dv, key_accept = jax.random.split(key, 3)
    dtype = box.dtype
    if state.axes is None:
        axis = jnp.zeros((), jnp.int32)
    else:
        axis = jax.random.choice(key_axis, jnp.asarray(state.axes, jnp.int32))
    dv_max = _pick(state.dv_max, axis)
    pressure = _pick(state.pressure, axis)
    volume = box_volume(box)
    delta_volume = dv_max * 2.0 * (jax.random.uniform(key_dv, (), dtype) - 0.5)
    new_volume = volume + delta_volume
    ratio = jnp.where(new_volume > 0, new_volume / volume, 1.0)
    if state.axes is None:
        scale = jnp.full((3,), jnp.cbrt(ratio), dtype)
    else:
        scale = jnp.where(jnp.arange(3) == axis, ratio, 1.0).astype(dtype)
    # box vectors are rows: scaling axis k multiplies the k-th component of each vector
    new_box = box * scale[None, :]
    new_positions = scale_molecules(positions, state.molecules, state.center_weights,
                                    scale.astype(positions.dtype))
    # one table, or a tuple of them (one per part of a summed potential)
    new_neighbors = update_neighbor_tables(neighbors, new_positions, new_box)
    new_energy, new_forces = evaluate(new_positions, new_box, new_neighbors)

    kT = BOLTZMANN * state.temperature
    work = (new_energy - energy).astype(dtype) + pressure * BAR_NM3 * delta_volume \
        - state.n_molecules * kT * jnp.log(ratio)
    u = jax.random.uniform(key_accept, (), dtype)
    accepted = (new_volume > 0) & jnp.isfinite(work) & ((work <= 0) | (u <= jnp.exp(-work / kT)))
    # OpenMM stops with an error when a box width falls below twice the cutoff; here such a move
    # is rejected (the ensemble is restricted to boxes the cutoffs fit in)
    cutoffs = [t.cutoff for t in jax.tree_util.tree_leaves(neighbors, is_leaf=is_table) if not t.dense]
    fits = jnp.all(jnp.diagonal(new_box) >= 2.0 * max(cutoffs)) if cutoffs else jnp.ones((), bool)
    accepted = accepted & fits

    def choose(a, b):
        return jax.tree_util.tree_map(lambda p, q: jnp.where(accepted, p, q), a, b)

    out_positions = jnp.where(accepted, new_positions, positions)
    out_box = jnp.where(accepted, new_box, box)
    out_energy = jnp.where(accepted, new_energy, energy)
    out_forces = choose(new_forces, forces) if with_forces else None

    def keep_trial_overflow(out, trial, old):
        # a trial table that did not fit is reported even when the move is rejected, since the
        # trial energy that decided it was then wrong (moves outside the cutoff's range aside)
        return dataclasses.replace(out, overflow=jnp.where(fits, trial.overflow, old.overflow),
                                   needed=jnp.where(fits, trial.needed, old.needed))

    out_neighbors = jax.tree_util.tree_map(keep_trial_overflow, choose(new_neighbors, neighbors), new_neighbors,
                                           neighbors, is_leaf=is_table)

    attempts = _pick(state.attempts, axis) + 1
    n_accepted = _pick(state.accepted, axis) + accepted.astype(jnp.int32)
    # OpenMM adapts with the volume before the move as the cap
    low = (attempts >= _ADAPT_WINDOW) & (n_accepted < _ADAPT_LOW * attempts)
    high = (attempts >= _ADAPT_WINDOW) & (n_accepted > _ADAPT_HIGH * attempts) & ~low
    new_dv = jnp.where(low, dv_max / _ADAPT_FACTOR, dv_max)
    new_dv = jnp.where(high, jnp.minimum(dv_max * _ADAPT_FACTOR, _ADAPT_CAP * volume), new_dv)
    reset = low | high
    attempts = jnp.where(reset, 0, attempts)
    n_accepted = jnp.where(reset, 0, n_accepted)
    new_state = dataclasses.replace(
        state, box=out_box, dv_max=_put(state.dv_max, axis, new_dv), attempts=_put(state.attempts, axis, attempts),
        accepted=_put(state.accepted, axis, n_accepted), total_attempts=state.total_attempts + 1,
        total_accepted=state.total_accepted + accepted.astype(jnp.int32))
    return BarostatStep(new_state, out_positions, out_neighbors, out_energy, out_forces, accepted, delta_volume,
                        work)


def apply_barostat(state: BarostatState, key, integrator_state, energy_fn, params, neighbors=None):
    """One barostat move on an integrator state (``diffmd.md``), refreshing its forces.

    Uses the integrator state's ``potential_energy`` and ``forces`` at its
    positions (no extra evaluation), and returns the integrator state with the
    positions, energy and forces of the configuration the move leaves.

    Args:
        state: ``BarostatState``.
        key: PRNG key.
        integrator_state: a state with ``positions``, ``forces`` and ``potential_energy``.
        energy_fn, params: the energy model.
        neighbors: the current neighbor table or None.

    Returns:
        ``(barostat_state, integrator_state, neighbors, accepted)``.
    """
    st = integrator_state
    res = barostat_step(state, key, st.positions, energy_fn, params, neighbors, energy=st.potential_energy,
                        forces=st.forces)
    st = dataclasses.replace(st, positions=res.positions, forces=res.forces.astype(st.forces.dtype),
                             potential_energy=res.energy.astype(st.potential_energy.dtype))
    return res.state, st, res.neighbors, res.accepted
