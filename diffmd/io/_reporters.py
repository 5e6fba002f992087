"""Reporters: the runner's output side (host-side numpy, between jitted chunks of steps).

Contract with the runner:

1. Before the first chunk the runner calls ``reporter.open(RunInfo(...))`` on each reporter.
2. Between chunks, for every step where some ``reporter.wants(step)`` (``step % interval == 0``),
   and for the run's final step whatever its interval (``Snapshot.final``), it pulls a
   :class:`Snapshot` to the host and calls :func:`dispatch`, which checks it for NaN/Inf once
   and hands it to the reporters that want it (every reporter gets the final step, so a run of
   100 steps reported every 30 ends its files and checkpoint at step 100). Forces and
   velocities need only be filled in when some reporter's ``needs_forces`` /
   ``needs_velocities`` is set.
3. It reports the starting state of every run (``step == RunInfo.start_step``), fresh or
   resumed; reporters skip steps they already hold, so a resumed run neither loses nor
   repeats a frame.
4. It calls ``close()`` in a ``finally`` block. Every reporter flushes after each write, so
   a crash or a :class:`~diffmd.kernels.errors.SimulationError` leaves the files intact.

Resuming from a checkpoint at step S: construct file reporters with ``append=True`` and
pass ``start_step=S``; they cut records after step S (written after the checkpoint was saved),
records cut short by a kill, and a previous run's final record between two intervals (a longer
run does not report that step), and continue: the files then equal those of a run that was never
interrupted. Put the :class:`CheckpointReporter` last so the files already hold step S when
the checkpoint at S is written.

Units: as everywhere in diffmd (nm, ps, kJ/mol, K, amu); files convert at the boundary
(DCD: Angstrom; extended XYZ: Angstrom, eV, eV/Angstrom; state.csv: units in column names).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from ..system import Topology
from ._checkpoint import save_checkpoint
from ._dcd import DCDWriter
from ._xyz import format_extxyz, symbols_of, truncate_extxyz
from ..kernels.constants import AVOGADRO
from ..kernels.errors import InputError, SimulationError
from tqdm.auto import tqdm

#: Columns of state.csv (volume and density only for periodic systems).
STATE_COLUMNS = ("step", "time_ps", "potential_kjmol", "kinetic_kjmol", "total_kjmol", "temperature_k")
PERIODIC_COLUMNS = ("volume_nm3", "density_gcm3")
#: g/cm^3 per amu/nm^3: 1e21 nm^3 per cm^3 over N_A amu per g.
_GCM3_PER_AMU_NM3 = 1e21 / AVOGADRO


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What reporters learn about a run before it starts.

    Attributes:
        n_atoms: atoms per frame.
        dt_ps: time step [ps].
        start_step: step of the state the run starts from (0, or the checkpoint's step).
        total_steps: steps this run will take (for the progress bar), or None.
        topology: names, elements, residues and bonds, or None.
        masses: (N,) atom masses [amu] (density), or None.
        periodic: whether the system has a box.
    """

    n_atoms: int
    dt_ps: float
    start_step: int = 0
    total_steps: int | None = None
    topology: Topology | None = None
    masses: np.ndarray | None = None
    periodic: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One reported state, on the host.

    Attributes:
        step: integration step.
        time_ps: simulated time [ps].
        positions: (N, 3) [nm].
        potential_energy: [kJ/mol].
        kinetic_energy: [kJ/mol].
        temperature: instantaneous temperature [K] (from the runner's degrees of freedom).
        box: (3, 3) box vectors as rows [nm], or None.
        velocities: (N, 3) [nm/ps], or None.
        forces: (N, 3) [kJ/mol/nm], or None.
        state: the full state pytree (for checkpoints), or None.
        final: the run's last step (reported to every reporter, whatever its interval).
    """

    step: int
    time_ps: float
    positions: np.ndarray
    potential_energy: float
    kinetic_energy: float
    temperature: float
    box: np.ndarray | None = None
    velocities: np.ndarray | None = None
    forces: np.ndarray | None = None
    state: Any = None
    final: bool = False


def check_finite(snapshot: Snapshot) -> None:
    """Raise :class:`SimulationError` if the snapshot holds NaN or Inf (OpenMM-style check).

    The message names the step, the first bad quantity (and atom) and the usual fixes.
    """
    problems = []
    for name in ("potential_energy", "kinetic_energy"):
        if not np.isfinite(getattr(snapshot, name)):
            problems.append(f"{name.replace('_', ' ')} is {getattr(snapshot, name)}")
    for name in ("positions", "velocities", "forces", "box"):
        value = getattr(snapshot, name)
        if value is not None:
            bad = ~np.isfinite(np.asarray(value, dtype=np.float64))
            if bad.any():
                where = f" (first at atom {int(np.argwhere(bad)[0][0])})" if name != "box" else ""
                problems.append(f"{name} contain NaN or Inf{where}")
    if problems:
        raise SimulationError(
            f"step {snapshot.step} (t = {snapshot.time_ps:g} ps): {'; '.join(problems)}. The simulation "
            "became unstable. Usual causes and fixes: a time step too large for the system (use "
            "<= 1 fs without constraints, <= 2 fs with bonds to hydrogen constrained, 4 fs only with "
            "hydrogen mass repartitioning); a starting structure with clashes (energy-minimize "
            "first with diffmd.minimize); wrong parameters or a box too small. Files written so far "
            "end at the last good report."
        )


class Reporter:
    """Base class: reports every ``interval`` steps; subclasses write something."""

    needs_forces = False
    needs_velocities = False

    def __init__(self, interval: int):
        if int(interval) <= 0:
            raise InputError(f"report interval must be a positive number of steps, got {interval}")
        self.interval = int(interval)

    def wants(self, step: int) -> bool:
        return step % self.interval == 0

    def open(self, run: RunInfo) -> None:
        self.run = run

    def report(self, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FramesReporter(Reporter):
    """Keeps the positions [nm] of every ``interval``-th step in memory: ``frames`` is a list of
    (N, 3) float64 arrays, one per report (for analysis or labelling in the same process)."""

    def __init__(self, interval: int):
        super().__init__(interval)
        self.frames = []

    def report(self, snapshot: Snapshot) -> None:
        self.frames.append(snapshot.positions.copy())


def dispatch(reporters: Sequence[Reporter], snapshot: Snapshot) -> None:
    """Check ``snapshot`` for NaN/Inf once, then give it to each reporter that wants its step.

    Raises:
        SimulationError: the snapshot is not finite; every reporter is flushed first, so all
            files end at the previous report.
    """
    wanting = [r for r in reporters if snapshot.final or r.wants(snapshot.step)]
    if not wanting:
        return
    try:
        check_finite(snapshot)
    except SimulationError:
        for r in reporters:
            r.flush()
        raise
    for r in wanting:
        r.report(snapshot)


def _keep_lines_through_step(path: str, header: str, keep_through_step: int, interval: int) -> int | None:
    """Cut a CSV whose first column is the step after ``keep_through_step`` or at the first step
    that is not a multiple of ``interval``; returns the last step kept."""
    with open(path, "rb") as fh:
        lines = fh.readlines()
    if not lines or lines[0].decode().strip() != header:
        raise InputError(f"{path}: cannot append, its header is not {header!r}; use a new file")
    keep, last = len(lines[0]), None
    for line in lines[1:]:
        if not line.endswith(b"\n"):
            break  # row cut short by a crash
        step = int(line.split(b",", 1)[0])
        if step > keep_through_step or step % interval:
            break
        keep, last = keep + len(line), step
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return last


class _TextFileReporter(Reporter):
    """A reporter that appends text to one open file handle ``self._fh``."""

    _fh = None

    def flush(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class StateDataReporter(_TextFileReporter):
    """Writes ``state.csv``: one row per report, flushed after each row.

    Columns: ``step,time_ps,potential_kjmol,kinetic_kjmol,total_kjmol,temperature_k``, then
    ``volume_nm3,density_gcm3`` for periodic systems, then ``ns_per_day`` (speed over the
    steps since the previous row, by wall clock; ``nan`` on a run's first row). Floats are
    written with six decimals.

    Args:
        path: the CSV file (conventionally ``DIR/state.csv``).
        interval: steps between rows.
        append: continue an existing file after a checkpoint restart (rows after
            ``RunInfo.start_step`` are dropped).
    """

    def __init__(self, path, interval: int, *, append: bool = False):
        super().__init__(interval)
        self.path, self.append, self._fh = os.fspath(path), append, None

    def open(self, run: RunInfo) -> None:
        super().open(run)
        self.columns = STATE_COLUMNS + (PERIODIC_COLUMNS if run.periodic else ()) + ("ns_per_day",)
        if run.periodic and run.masses is None:
            raise InputError("StateDataReporter needs RunInfo.masses [amu] for the density of a periodic system")
        self._mass = float(np.sum(run.masses)) if run.masses is not None else None
        header = ",".join(self.columns)
        self._last_step = None
        if self.append and os.path.exists(self.path):
            self._last_step = _keep_lines_through_step(self.path, header, run.start_step, self.interval)
            self._fh = open(self.path, "a", encoding="ascii")
        else:
            self._fh = open(self.path, "w", encoding="ascii")
            self._fh.write(header + "\n")
            self._fh.flush()
        self._clock = None

    def report(self, snapshot: Snapshot) -> None:
        if self._last_step is not None and snapshot.step <= self._last_step:
            return
        check_finite(snapshot)
        now = time.perf_counter()
        speed = float("nan")
        if self._clock is not None and now > self._clock[1]:
            days = (now - self._clock[1]) / 86400.0
            speed = (snapshot.step - self._clock[0]) * self.run.dt_ps * 1e-3 / days
        self._clock = (snapshot.step, now)
        pot, kin = float(snapshot.potential_energy), float(snapshot.kinetic_energy)
        values = [snapshot.time_ps, pot, kin, pot + kin, snapshot.temperature]
        if self.run.periodic:
            if snapshot.box is None:
                raise InputError(f"step {snapshot.step}: periodic run reported without a box")
            volume = float(abs(np.linalg.det(np.asarray(snapshot.box, dtype=np.float64))))
            values += [volume, self._mass / volume * _GCM3_PER_AMU_NM3]
        values.append(speed)
        self._fh.write(str(int(snapshot.step)) + "".join(f",{float(v):.6f}" for v in values) + "\n")
        self._fh.flush()
        self._last_step = snapshot.step


class DCDReporter(Reporter):
    """Writes positions (and the unit cell when periodic) to a DCD file every ``interval`` steps.

    Frames are evenly spaced (the runner reports every multiple of ``interval``), except a
    run's final step between two of them, which ends the file (the header's last-step word
    holds it, see :mod:`diffmd.io._dcd`); a resumed run cuts that frame off again.

    Args:
        path: the DCD file.
        interval: steps between frames.
        append: continue an existing file after a checkpoint restart (frames after
            ``RunInfo.start_step`` are dropped; the interval must match the file's).
    """

    def __init__(self, path, interval: int, *, append: bool = False):
        super().__init__(interval)
        self.path, self.append, self.writer = os.fspath(path), append, None

    def open(self, run: RunInfo) -> None:
        super().open(run)
        if self.append and os.path.exists(self.path):
            w = DCDWriter.reopen(self.path, run.n_atoms)
            if w.interval != self.interval or w.periodic != run.periodic:
                w.close()
                raise InputError(f"{self.path}: cannot append: the file has interval {w.interval} and "
                                 f"periodic={w.periodic}, this run {self.interval} and {run.periodic}")
            keep = 0 if run.start_step < w.first_step else (run.start_step - w.first_step) // w.interval + 1
            w.truncate(min(keep, w.n_frames - int(w.ends_off_grid)))  # evenly spaced frames up to the start
            self.writer = w
        else:
            first = -(-run.start_step // self.interval) * self.interval  # first multiple >= start
            self.writer = DCDWriter(self.path, run.n_atoms, dt_ps=run.dt_ps, first_step=first,
                                    interval=self.interval, periodic=run.periodic)

    def report(self, snapshot: Snapshot) -> None:
        w = self.writer
        expected = w.step_of_frame(w.n_frames)
        if w.n_frames and snapshot.step <= w.last_step:
            return  # already in the file (resumed run)
        if snapshot.step != expected and not (snapshot.final and snapshot.step < expected):
            raise InputError(f"{self.path}: DCD frames must be evenly spaced; expected step {expected}, "
                             f"got {snapshot.step} (report every {self.interval} steps)")
        check_finite(snapshot)
        w.write_frame(snapshot.positions, snapshot.box, step=snapshot.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ExtXYZReporter(_TextFileReporter):
    """Writes extended XYZ frames (ASE units: Angstrom, eV, eV/Angstrom) for training data.

    Each frame carries the potential energy, the forces (unless ``forces=False``), the cell
    when periodic, and ``step`` and ``time_ps`` keys.

    Args:
        path: the ``.xyz`` file.
        interval: steps between frames.
        forces: write forces (the runner then fills ``Snapshot.forces``).
        symbols: element symbols; by default from ``RunInfo.topology``.
        append: continue an existing file after a checkpoint restart.
    """

    def __init__(self, path, interval: int, *, forces: bool = True, symbols=None, append: bool = False):
        super().__init__(interval)
        self.path, self.append, self._fh = os.fspath(path), append, None
        self.needs_forces, self.symbols = bool(forces), symbols

    def open(self, run: RunInfo) -> None:
        super().open(run)
        if self.symbols is None:
            if run.topology is None:
                raise InputError("ExtXYZReporter needs element symbols: pass symbols= or a RunInfo.topology")
            self.symbols = symbols_of(run.topology.elements)
        self._last_step = None
        if self.append and os.path.exists(self.path):
            _, self._last_step = truncate_extxyz(self.path, run.start_step, self.interval)
            self._fh = open(self.path, "a", encoding="ascii")
        else:
            self._fh = open(self.path, "w", encoding="ascii")

    def report(self, snapshot: Snapshot) -> None:
        if self._last_step is not None and snapshot.step <= self._last_step:
            return
        check_finite(snapshot)
        if self.needs_forces and snapshot.forces is None:
            raise InputError(f"step {snapshot.step}: ExtXYZReporter(forces=True) needs Snapshot.forces")
        self._fh.write(format_extxyz(
            self.symbols, snapshot.positions, snapshot.box, energy=snapshot.potential_energy,
            forces=snapshot.forces if self.needs_forces else None,
            info={"step": int(snapshot.step), "time_ps": float(snapshot.time_ps)}))
        self._fh.flush()
        self._last_step = snapshot.step


class ProgressReporter(Reporter):
    """A tqdm progress bar on stderr with the current speed in ns/day.

    Args:
        interval: steps between updates.
        enabled: True or False to force; None (default) shows the bar only when ``file``
            is a terminal, so logs and batch jobs stay clean.
        file: the stream (default ``sys.stderr``).
    """

    def __init__(self, interval: int, *, enabled: bool | None = None, file=None):
        super().__init__(interval)
        self.enabled, self.file, self._bar = enabled, file, None

    def open(self, run: RunInfo) -> None:
        super().open(run)
        stream = self.file if self.file is not None else sys.stderr
        enabled = self.enabled
        if enabled is None:
            enabled = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = tqdm(total=run.total_steps, unit="step", file=stream, disable=not enabled,
                         dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
        self._mark = (run.start_step, time.perf_counter())

    def report(self, snapshot: Snapshot) -> None:
        step0, t0 = self._mark
        now = time.perf_counter()
        if snapshot.step > step0:
            self._bar.update(snapshot.step - step0)
            if now > t0:
                ns_day = (snapshot.step - step0) * self.run.dt_ps * 1e-3 / ((now - t0) / 86400.0)
                self._bar.set_postfix_str(f"{ns_day:.4g} ns/day", refresh=False)
            self._mark = (snapshot.step, now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class CheckpointReporter(Reporter):
    """Saves ``Snapshot.state`` to ``directory/checkpoint/`` (see :mod:`diffmd.io`).

    The metadata holds ``step`` and ``time_ps`` plus ``extra_metadata``. A non-finite state is
    never saved, so the checkpoint on disk is always the last good one. Place it after the
    file reporters.

    Args:
        directory: the run's output folder.
        interval: steps between checkpoints.
        extra_metadata: stored with every checkpoint (settings, table layout).
        append: the run continues from the checkpoint already in ``directory``: its
            starting state, which that checkpoint holds, is not written again.
    """

    def __init__(self, directory, interval: int, *, extra_metadata: dict | None = None, append: bool = False):
        super().__init__(interval)
        self.directory, self.extra, self.append = os.fspath(directory), dict(extra_metadata or {}), append

    def report(self, snapshot: Snapshot) -> None:
        if self.append and snapshot.step == self.run.start_step:
            return
        if snapshot.state is None:
            raise InputError(f"step {snapshot.step}: CheckpointReporter needs Snapshot.state")
        check_finite(snapshot)
        meta = {**self.extra, "step": int(snapshot.step), "time_ps": float(snapshot.time_ps)}
        save_checkpoint(self.directory, snapshot.state, meta)
