"""The MD runner's core: a pure chunk of steps, and the host loop that drives it.

``make_chunk`` builds the pure function ``chunk(carry, params, box, constraints) ->
(carry, observables)`` that advances ``n_steps`` steps with ``jax.lax.scan``: no host
I/O, so it can be jitted, vmapped and differentiated (training uses the same function).
The neighbor table travels in the carry and is kept current inside the scan; so does the
Monte Carlo barostat's state in NPT runs (``Carry.barostat``), whose box then replaces
the ``box`` argument.

``run_dynamics`` runs one system through the host loop of every run (``run_chunks``,
:mod:`diffmd.md._loop`): it jits the chunk once per chunk length and supplies what is
particular to a single carry: the neighbor-table re-allocation (``reallocate``), the failure
checks of :mod:`diffmd.md` (NaN energies, a temperature or positions no physical run
reaches, constraint failure; the message names the likely cause) and the reporters, fed
between chunks following the contract of :mod:`diffmd.io`. Chunks end on multiples of the
chunk size and at the run's last step, which is always reported.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._failures import RunFacts, advice, first_failure, model_energy_at, position_failure
from ._tables import any_overflow, capacities, neighbor_tables, reallocate
from ._barostat import BarostatState
from ._integrators import kinetic_energy, make_force_fn
from ._step import member_step
from ._loop import ChunkHooks, run_chunks
from ..kernels.constants import BOLTZMANN
from ..kernels.neighbors import Neighbors
from ..io import CheckpointReporter, Reporter, RunInfo, Snapshot, dispatch


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["state", "neighbors", "barostat", "barostat_key"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Carry:
    """What a chunk carries from step to step.

    Attributes:
        state: the integrator's state (``VerletState``, ``LangevinState``, ...).
        neighbors: the neighbor table (``Neighbors``), a pytree of tables (e.g. the
            tuple of a ``sum_potentials`` model, one per part, None entries allowed),
            or None for energy functions that take none.
        barostat: the Monte Carlo barostat's state (``diffmd.md.BarostatState``)
            for NPT, or None (NVT/NVE). Its ``box`` is the current box.
        barostat_key: PRNG key of the barostat moves (needed with ``barostat``). It
            never changes: the move after step k uses ``fold_in(barostat_key, k)``, so
            the moves depend only on the carry (reproducible, and resumed runs continue
            bit for bit).
    """

    state: Any
    neighbors: Any = None
    barostat: BarostatState | None = None
    barostat_key: Any = None

    def current_box(self, box=None):
        """The box of this carry: the barostat's when there is one, else ``box``."""
        return box if self.barostat is None else self.barostat.box


def make_chunk(integrator, energy_fn, n_steps: int) -> Callable:
    """The pure function that advances a ``Carry`` by ``n_steps`` steps (``member_step``, scanned).

    Each step is ``integrator.step`` with forces from
    ``energy_fn(params, positions, box, neighbors)``, followed by
    ``update_neighbors`` (on every table when ``carry.neighbors`` is a tuple or
    other pytree of tables, as a ``sum_potentials`` model takes). When that
    rebuilds a table (some atom moved more than half its skin), the forces at the
    new positions are recomputed with the new tables, so every force is evaluated
    with tables valid for its positions (as OpenMM's rebuild-before-forces), not
    ones that are a step stale.

    With a barostat in the carry (NPT), the box of every step is the barostat's
    current box (the ``box`` argument is ignored), and after each step k with
    ``k % frequency == 0`` (k counted by the integrator's ``step``, as OpenMM counts)
    one Monte Carlo volume move (``apply_barostat``) is made with the key
    ``fold_in(carry.barostat_key, k)``; an accepted move leaves scaled positions,
    a new box, a table rebuilt for it and the forces there. The move sits in a
    ``lax.cond``, so it costs nothing on the other steps; under a plain ``vmap`` (one
    box per replica) the cond becomes a select and the trial energy is computed on every
    step, as the neighbor rebuild's is (``diffmd.ensemble`` vmaps ``member_step`` in
    lockstep instead, which keeps both conds).

    Args:
        integrator: an ``Integrator`` (``diffmd.md``).
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``.
        n_steps: steps per chunk (static: another value compiles another function).

    Returns:
        ``chunk(carry, params, box=None, constraints=None) -> (carry, observables)``
        where ``observables`` holds per-step arrays of shape ``(n_steps,)``:
        ``potential_energy`` and ``kinetic_energy`` [kJ/mol] after each step (and
        ``volume`` [nm^3] with a barostat).
        ``carry.neighbors.overflow`` (sticky; with several tables, that of any
        table: ``any_overflow``) says that a table was too small somewhere in the
        chunk (also for a barostat's trial box): the results are then invalid and
        the caller must re-allocate and replay (``run_dynamics`` does).
        ``carry.state.constraint_failed`` says a constraint solve did not
        converge.
    """
    n_steps = int(n_steps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")

    def chunk(carry: Carry, params, box=None, constraints=None):
        npt = carry.barostat is not None and carry.barostat.frequency > 0
        if npt and carry.barostat_key is None:
            raise ValueError("a Carry with a barostat needs barostat_key (a PRNG key)")
        if carry.neighbors is not None and not isinstance(carry.neighbors, Neighbors):
            neighbor_tables(carry.neighbors)  # every leaf a table, checked before tracing

        def body(c: Carry, _):
            return member_step(integrator, energy_fn, c, params, box, constraints)

        return jax.lax.scan(body, carry, None, length=n_steps)

    return chunk


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """What a run returns (host numpy arrays unless noted).

    Attributes:
        carry: the final ``Carry`` (integrator state and neighbor table; jax arrays).
        positions: (N, 3) final positions [nm], float64 for every precision: an exact copy
            of the integrator's state (float32 under ``precision="single"``, which stays in
            ``carry.state``).
        velocities: (N, 3) final velocities [nm/ps], float64 as ``positions``.
        steps: (R,) steps of the reports of this run (step 0 / the start included).
        time_ps: (R,) simulated times [ps].
        potential_energy, kinetic_energy, total_energy: (R,) [kJ/mol].
        temperature: (R,) [K].
        volume: (R,) box volume [nm^3] at each report (it changes under a barostat),
            or None without a box.
        ns_per_day: speed of the run, compilation excluded where there was more
            than one chunk [ns/day].
        wall_seconds: wall time of the stepping loop [s].
        timed_steps, timed_seconds: the steps after the first (compiling) chunk and their
            wall time [s], which ``ns_per_day`` measures when ``timed_steps > 0``; below
            ``MIN_TIMED_SECONDS`` the speed says little.
        n_dof: degrees of freedom used for the temperature.
        reallocations: how often the neighbor table was enlarged (each replays a chunk).
        error: None, or the message of the failure (only with ``throw=False``).
    """

    carry: Any
    positions: np.ndarray
    velocities: np.ndarray
    steps: np.ndarray
    time_ps: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    total_energy: np.ndarray
    temperature: np.ndarray
    ns_per_day: float
    wall_seconds: float
    n_dof: int
    reallocations: int = 0
    error: str | None = None
    volume: np.ndarray | None = None
    timed_steps: int = 0
    timed_seconds: float = 0.0

    @property
    def state(self):
        """The final integrator state."""
        return self.carry.state


def _snapshot(carry: Carry, box, dt_ps: float, n_dof: int, reporters, final: bool = False) -> Snapshot:
    st = carry.state
    box = carry.current_box(box)  # a barostat's box changes from report to report
    step = int(st.step)
    kin = float(kinetic_energy(st.velocities, st.masses))
    want = [r for r in reporters if final or r.wants(step)]
    forces = np.asarray(st.forces, np.float64) if any(r.needs_forces for r in want) else None
    return Snapshot(
        step=step, time_ps=step * dt_ps, positions=np.asarray(st.positions, np.float64),
        potential_energy=float(st.potential_energy), kinetic_energy=kin,
        temperature=2.0 * kin / (n_dof * BOLTZMANN),
        box=None if box is None else np.asarray(box, np.float64),
        velocities=np.asarray(st.velocities, np.float64), forces=forces,
        state=carry if any(isinstance(r, CheckpointReporter) for r in want) else None, final=final)


@dataclasses.dataclass(frozen=True)
class _Limits:
    """What a chunk is checked against (see :mod:`diffmd.md`)."""

    max_temperature_factor: float | None
    reference_temperature: float | None
    origin: np.ndarray
    radius: float
    facts: RunFacts | None


def _check_chunk(carry: Carry, obs, start_step: int, n_dof: int, limits: _Limits, energy_fn=None, params=None,
                 box=None) -> str | None:
    """The message of the first failure in a finished chunk (what, where, likely cause), or None."""
    failure = first_failure(obs["potential_energy"], obs["kinetic_energy"], n_dof, start_step,
                            max_temperature_factor=limits.max_temperature_factor,
                            reference_temperature=limits.reference_temperature)
    if failure is None:
        failure = position_failure(carry.state.positions, limits.origin, limits.radius, int(carry.state.step))
    if failure is not None:
        facts = limits.facts
        model = model_energy_at(failure, energy_fn, None if facts is None else facts.n_atoms,
                                _part_energy(energy_fn, params, carry, box))
        return f"step {failure.step}: {failure.what}. {advice(facts, model_energy=model)}"
    if bool(carry.state.constraint_failed):
        return (f"a constraint solve did not converge between steps {start_step} and {int(carry.state.step)}. "
                + advice(limits.facts))
    return None


def _part_energy(energy_fn, params, carry: Carry, box):
    """``evaluate(i)``: part ``i`` of a sum of potentials at the carry's positions [kJ/mol], or None."""
    def evaluate(i):
        x = carry.state.positions
        if not bool(jnp.all(jnp.isfinite(x))):
            return None
        table = None if carry.neighbors is None else carry.neighbors[i]
        try:
            return float(energy_fn.parts[i](params[i], x, carry.current_box(box), table))
        except Exception:  # only advice: an error here must not hide the failure being reported
            return None

    return evaluate


def run_dynamics(integrator, energy_fn, params, carry: Carry, steps: int, *, box=None, constraints=None,
                 n_dof: int, dt_ps: float, chunk_size: int, reporters: Sequence[Reporter] = (),
                 run_info: RunInfo | None = None, throw: bool = True,
                 on_reallocate: Callable[[Any], None] | None = None,
                 chunk_fns: dict | None = None, max_temperature_factor: float | None = None,
                 reference_temperature: float | None = None, facts: RunFacts | None = None) -> SimulationResult:
    """Advance ``carry`` by ``steps`` steps in jitted chunks, reporting between chunks.

    Chunks end on multiples of ``chunk_size`` (counted from step 0, so a run resumed from
    any step reports on the same steps) and at the last step, which every reporter gets.

    Args:
        integrator: the ``Integrator`` whose state is ``carry.state``.
        energy_fn, params: the energy model.
        carry: the starting ``Carry``.
        steps: steps to take.
        box: (3, 3) box [nm] or None (with a barostat in ``carry``, its box is used).
        constraints: a ``Constraints`` set or None.
        n_dof: degrees of freedom for the temperature.
        dt_ps: time step [ps] (for report times; the state holds the traced dt).
        chunk_size: steps per jitted chunk; reporter intervals must be multiples of it.
        reporters: opened and closed here (see :mod:`diffmd.io`).
        run_info: what the reporters are told; default from ``carry``.
        throw: raise ``SimulationError`` on a failure (NaN energies, a temperature above
            the limit, an atom far outside the system, constraint failure) naming the step
            and the likely cause (else stop and return the result with ``error`` set).
            The chunk that failed is dropped: files end at the last good report.
        on_reallocate: called with each new neighbor table, or pytree of tables (e.g. to update
            checkpoint metadata).
        chunk_fns: a dict used as the cache of jitted chunk functions by chunk length
            (pass one to share compilations between calls).
        max_temperature_factor: the run fails at a step whose kinetic temperature exceeds
            this multiple of ``reference_temperature`` [K] (None: no such check).
        facts: what is known about the run's set-up, to name a failure's likely cause.

    Returns:
        ``SimulationResult``.
    """
    chunk_fns = {} if chunk_fns is None else chunk_fns
    reallocations = 0
    start = int(carry.state.step)
    if run_info is None:
        run_info = RunInfo(n_atoms=int(carry.state.positions.shape[0]), dt_ps=dt_ps, start_step=start,
                           total_steps=steps, masses=np.asarray(carry.state.masses),
                           periodic=carry.current_box(box) is not None)
    history: list[tuple] = []
    x0 = np.asarray(carry.state.positions, np.float64)
    origin = x0.mean(axis=0) if x0.size else np.zeros(3)
    limits = _Limits(max_temperature_factor, reference_temperature, origin,
                     float(np.linalg.norm(x0 - origin, axis=-1).max()) if x0.size else 0.0, facts)

    reported = [None]  # the last step a reporter was given

    def record(c: Carry, final: bool = False):
        snap = _snapshot(c, box, dt_ps, n_dof, reporters, final)
        volume = np.nan if snap.box is None else abs(float(np.linalg.det(snap.box)))
        history.append((snap.step, snap.potential_energy, snap.kinetic_energy, snap.temperature, volume))
        dispatch(reporters, snap)
        if final or any(r.wants(snap.step) for r in reporters):
            reported[0] = snap.step

    def compiled(n):
        if n not in chunk_fns:
            chunk_fns[n] = jax.jit(make_chunk(integrator, energy_fn, n))
        return chunk_fns[n]

    nb = carry.neighbors
    if nb is not None and any_overflow(nb):
        # the starting table was already too small, so the starting forces are wrong: enlarge it
        # and recompute them
        cur_box = carry.current_box(box)
        fresh = reallocate(nb, carry.state.positions, cur_box, 0)
        energy, forces = make_force_fn(energy_fn, params, cur_box, fresh)(carry.state.positions)
        st = carry.state
        carry = dataclasses.replace(
            carry, state=dataclasses.replace(st, forces=forces.astype(st.forces.dtype),
                                             potential_energy=energy.astype(st.potential_energy.dtype)),
            neighbors=fresh)
        reallocations += 1
        if on_reallocate is not None:
            on_reallocate(fresh)

    def check(new: Carry, obs, first_step: int):
        message = _check_chunk(new, obs, first_step, n_dof, limits, energy_fn, params, box)
        if message is not None:
            for r in reporters:
                r.flush()
            if reporters:
                kept = "Files written so far" + (" and the checkpoint" if any(
                    isinstance(r, CheckpointReporter) for r in reporters) else "")
                message += f" {kept} end at the last good report (step {reported[0]})."
        return message

    def enlarge(c: Carry, new: Carry, retry: int) -> Carry:
        # of several tables, only the ones that overflowed are enlarged, the others restart from the
        # chunk's start
        fresh = reallocate(new.neighbors, c.state.positions, c.current_box(box), retry, start=c.neighbors)
        if on_reallocate is not None:
            on_reallocate(fresh)
        return dataclasses.replace(c, neighbors=fresh)

    hooks = ChunkHooks(
        run=lambda n, c: compiled(n)(c, params, box, constraints),
        overflowed=lambda c: c.neighbors is not None and any_overflow(c.neighbors),
        reallocate=enlarge, check=check, accept=lambda c, new, step: new, record=record,
        positions=lambda c: c.state.positions, describe=lambda c: f" (capacity {capacities(c.neighbors)})")
    for r in reporters:
        r.open(run_info)
    try:
        outcome = run_chunks(carry, int(steps), start=start, chunk_size=chunk_size, dt_ps=dt_ps, hooks=hooks,
                             throw=throw)
    finally:
        for r in reporters:
            r.close()
    carry, error, clock = outcome.state, outcome.error, outcome.clock
    speed, wall, reallocations = outcome.speed, outcome.wall, reallocations + outcome.reallocations
    h = np.array(history, dtype=np.float64).reshape(-1, 5)
    return SimulationResult(
        carry=carry, positions=np.asarray(carry.state.positions, np.float64),
        velocities=np.asarray(carry.state.velocities, np.float64), steps=h[:, 0].astype(np.int64),
        time_ps=h[:, 0] * dt_ps, potential_energy=h[:, 1], kinetic_energy=h[:, 2], total_energy=h[:, 1] + h[:, 2],
        temperature=h[:, 3], ns_per_day=float(speed), wall_seconds=wall, n_dof=int(n_dof),
        reallocations=reallocations, error=error, volume=None if np.isnan(h[:, 4]).all() else h[:, 4],
        timed_steps=clock.timed_steps, timed_seconds=clock.timed_seconds)
