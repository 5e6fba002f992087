"""The one host loop of every run: chunk after chunk, replay on overflow, checks, records, clock.

``run_chunks`` drives a jitted chunk function (``make_chunk`` for a single run,
``diffmd.ensemble.make_ensemble_chunk`` for an ensemble) from step ``start`` for
``steps`` steps. Chunks end on multiples of the chunk size (so reports fall on them
whatever step a run resumes from) and at the run's last step, which is always recorded.
After each chunk it asks whether a neighbor table overflowed (then the tables are
re-allocated at the chunk's start and the chunk replayed, at most ``MAX_REALLOCATIONS``
times), checks the chunk for failures (a message stops the run: raised, or returned
with ``throw=False``), applies the run's moves between chunks (replica exchange), times
the run (``SpeedClock``) and records the state (reporters). What differs between a single
run and an ensemble (one carry or a stacked one, per-member files, sharding) comes in as
the ``ChunkHooks``; the loop itself is written once.

Steps are integrator steps; times [ps]; speeds [ns/day].
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from ._tables import MAX_REALLOCATIONS
from ..kernels.errors import SimulationError

#: The stepping after the first (compiling) chunk must take at least this long [s] for a speed
#: worth printing: shorter, a chunk's fixed host costs (transfers, reports, dispatch) dominate.
MIN_TIMED_SECONDS = 2.0


def speed_note(timed_steps: int, timed_seconds: float) -> str | None:
    """None when the timed part of a run (after compilation) is long enough for its ns/day to mean
    something (``MIN_TIMED_SECONDS``); else a line saying why no speed is given."""
    if timed_steps and timed_seconds >= MIN_TIMED_SECONDS:
        return None
    return (f"speed: not measured, the stepping after compilation took {timed_seconds:.2f} s (ns/day needs at "
            f"least {MIN_TIMED_SECONDS:g} s: run more steps)")


def next_chunk(step: int, end: int, chunk_size: int) -> int:
    """Steps of the chunk that starts at ``step``: up to the next multiple of ``chunk_size``, or to ``end``.

    Chunks end on multiples of the chunk size (so reports fall on them whatever step a run
    resumes from) and at the run's last step ``end``.
    """
    return min(chunk_size - step % chunk_size, end - step)


#: Summaries average the temperature over the run after this fraction of its steps (a run from a
#: minimized structure starts cold and takes a few picoseconds to warm up).
EQUILIBRATION_FRACTION = 0.1


def after_equilibration(steps, end_step: int) -> np.ndarray:
    """Mask of the samples at ``steps`` that lie after the first ``EQUILIBRATION_FRACTION`` of a
    run ending at ``end_step`` (counted from step 0); the last sample when none does."""
    steps = np.asarray(steps)
    mask = steps >= EQUILIBRATION_FRACTION * end_step
    if not mask.any() and steps.size:
        mask[-1] = True
    return mask


class SpeedClock:
    """Wall-clock speed of a chunked run in ns/day, leaving out the first (compiling) chunk.

    ``timed_steps`` and ``timed_seconds`` say how much of the run the speed measures (zero
    when there was a single chunk: then the speed includes compilation).
    """

    def __init__(self, dt_ps: float):
        self.dt_ps = float(dt_ps)
        self.start = time.perf_counter()
        self.after_first = None
        self.steps_after_first = 0
        self.steps = 0
        self.timed_steps, self.timed_seconds = 0, 0.0

    def chunk_done(self, n_steps: int, positions) -> None:
        """Note a finished chunk of ``n_steps`` (``positions`` are waited for after the first)."""
        self.steps += n_steps
        if self.after_first is None:
            jax.block_until_ready(positions)
            self.after_first = time.perf_counter()
        else:
            self.steps_after_first += n_steps

    def finish(self, positions) -> tuple[float, float]:
        """``(ns_per_day, wall_seconds)``: over the chunks after the first when there were several."""
        jax.block_until_ready(positions)
        end = time.perf_counter()
        wall = end - self.start
        self.timed_steps = self.steps_after_first
        self.timed_seconds = end - self.after_first if self.steps_after_first > 0 else 0.0
        if self.steps_after_first > 0:
            return self.steps_after_first * self.dt_ps * 1e-3 / ((end - self.after_first) / 86400.0), wall
        if wall > 0 and self.steps > 0:
            return self.steps * self.dt_ps * 1e-3 / (wall / 86400.0), wall
        return float("nan"), wall




@dataclasses.dataclass(frozen=True)
class ChunkHooks:
    """What ``run_chunks`` does with the run's own state (``S``: a ``Carry``, an ``Ensemble``, ...).

    Attributes:
        run: ``run(n, s) -> (carry, observables)``: ``n`` steps from ``s`` (jitted chunk).
        overflowed: ``overflowed(carry) -> bool``: some neighbor table was too small in the chunk.
        reallocate: ``reallocate(s, carry, retry) -> s``: ``s`` with tables enlarged after the
            overflow ``carry`` reports (``retry`` 0 first), to replay the chunk from.
        check: ``check(carry, observables, start_step) -> str | None``: the failure of a chunk
            that started at ``start_step`` (the whole message), or None.
        accept: ``accept(s, carry, step) -> s``: ``s`` advanced to the chunk's ``carry`` that
            ends at ``step`` (with any moves between chunks applied).
        record: ``record(s, final)``: report ``s`` (``final``: the run's last state).
        positions: ``positions(s)``: the positions the clock waits for.
        describe: ``describe(s) -> str``: the tables' capacities, for the overflow message.
    """

    run: Callable[[int, Any], tuple]
    overflowed: Callable[[Any], bool]
    reallocate: Callable[[Any, Any, int], Any]
    check: Callable[[Any, Any, int], str | None]
    accept: Callable[[Any, Any, int], Any]
    record: Callable[[Any, bool], None]
    positions: Callable[[Any], Any]
    describe: Callable[[Any], str] = lambda s: ""


@dataclasses.dataclass(frozen=True)
class LoopOutcome:
    """What ``run_chunks`` ends with: the last good state, the failure message (with
    ``throw=False``), the number of re-allocations and the finished ``SpeedClock``."""

    state: Any
    error: str | None
    reallocations: int
    clock: SpeedClock
    speed: float
    wall: float


def run_chunks(state, steps: int, *, start: int, chunk_size: int, dt_ps: float, hooks: ChunkHooks,
               throw: bool = True) -> LoopOutcome:
    """Advance ``state`` by ``steps`` steps chunk by chunk (see the module docstring).

    Args:
        state: the run's state at step ``start`` (whatever the hooks take).
        steps: steps to take.
        start: the step ``state`` is at.
        chunk_size: chunks end on multiples of it (counted from step 0) and at the last step.
        dt_ps: time step [ps], for the speed.
        hooks: ``ChunkHooks``.
        throw: raise ``SimulationError`` with the message of a failed chunk (else stop there
            and return it in ``error``). The failed chunk is dropped.

    Returns:
        ``LoopOutcome``.

    Raises:
        SimulationError: a failure (with ``throw``), or a table that still overflows after
            ``MAX_REALLOCATIONS`` re-allocations.
    """
    error, reallocations, done = None, 0, 0
    end = start + int(steps)
    clock = SpeedClock(dt_ps)
    hooks.record(state, steps == 0)
    while done < steps:
        n = next_chunk(start + done, end, chunk_size)
        attempt = 0
        while True:
            new, obs = hooks.run(n, state)
            if not hooks.overflowed(new):
                break
            # a table was too small somewhere in the chunk (or for a barostat's trial box): enlarge
            # it at the chunk's start and replay the whole chunk, so no step is lost or computed wrong
            if attempt == MAX_REALLOCATIONS:
                raise SimulationError(f"step {start + done}: the neighbor table still overflows after {attempt} "
                                      f"re-allocations{hooks.describe(state)}")
            state = hooks.reallocate(state, new, attempt)
            attempt += 1
            reallocations += 1
        message = hooks.check(new, obs, start + done)
        if message is not None:
            if throw:
                raise SimulationError(message)
            error = message
            break
        done += n
        state = hooks.accept(state, new, start + done)
        clock.chunk_done(n, hooks.positions(state))
        hooks.record(state, done == steps)
    speed, wall = clock.finish(hooks.positions(state))
    return LoopOutcome(state, error, reallocations, clock, speed, wall)
