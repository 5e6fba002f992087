"""An ensemble run: jitted batched chunks through the one host loop, per-member reporters.

Runs a stacked ``Carry`` through the host loop of every run (``diffmd.md.run_chunks``,
as ``diffmd.md.run_dynamics`` runs one) and supplies what is particular to an ensemble:
the member axis sharded over the devices, neighbor tables re-allocated for every member
(the chunk is then replayed for all), the failure checks of :mod:`diffmd.md` per member
(NaN energy, a temperature above the limit, an atom leaving the system; the message names
member, step and likely cause), each member's files written between chunks (the final
step always) and the ensemble moves (replica exchange) applied there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _padding
from ..md import (DEFAULT_MAX_TEMPERATURE_FACTOR, RunFacts, advice, check_max_temperature_factor,
                        first_failure, position_failure, reference_temperature, temperatures)
from ..md import ChunkHooks, Carry, after_equilibration, neighbor_tables, reallocate, run_chunks
from ._stack import Ensemble, make_ensemble_chunk
from ..kernels.constants import BOLTZMANN
from ..kernels.errors import InputError
from ..kernels.neighbors import Neighbors, every_cluster_capacity, is_table
from ..io import DCDReporter, ProgressReporter, RunInfo, Snapshot, StateDataReporter, dispatch
from ..io import write_pdb
import json

MEMBER_DIR = "member-{:03d}"
SUMMARY_FILE = "ensemble.json"


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """What an ensemble run returns (host numpy arrays).

    Attributes:
        ensemble: the ensemble with its final state (run it again to continue).
        steps: (R,) steps of the reports (the start included).
        potential_energy, kinetic_energy, total_energy: (R, M) [kJ/mol].
        temperature: (R, M) [K].
        ns_per_day: aggregate speed, simulated time of all members per day [ns/day].
        ns_per_day_member: speed of one member (all run together) [ns/day].
        wall_seconds: wall time of the stepping loop [s].
        reallocations: neighbor-table re-allocations (each replays a chunk).
        move_log: what the ensemble moves logged (e.g. exchange acceptance), by move name.
        error: None, or the failure message (with ``throw=False``).
        timed_steps, timed_seconds: the steps after the first (compiling) chunk and their
            wall time [s], which the speeds measure (see ``SimulationResult``).
        volume: (R, M) box volumes [nm^3] at the reports (they change under a barostat), or
            None without a box.
    """

    ensemble: Ensemble
    steps: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    total_energy: np.ndarray
    temperature: np.ndarray
    ns_per_day: float
    ns_per_day_member: float
    wall_seconds: float
    reallocations: int = 0
    move_log: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    timed_steps: int = 0
    timed_seconds: float = 0.0
    volume: np.ndarray | None = None


def member_mesh(n_members: int, devices=None) -> Mesh:
    """A 1-D mesh (axis ``'members'``) over as many devices as evenly divide the members."""
    devices = list(jax.devices() if devices is None else devices)
    n = max(d for d in range(1, len(devices) + 1) if n_members % d == 0)
    return Mesh(np.array(devices[:n]), ("members",))


def shard_members(tree, mesh: Mesh, n_members: int):
    """Place a pytree on ``mesh``: arrays with a leading member axis split along it, others replicated."""
    split = NamedSharding(mesh, PartitionSpec("members"))
    whole = NamedSharding(mesh, PartitionSpec())

    def put(x):
        x = jnp.asarray(x)
        return jax.device_put(x, split if x.ndim >= 1 and x.shape[0] == n_members else whole)

    return jax.tree_util.tree_map(put, tree)


@functools.lru_cache(maxsize=16)
def _compiled_chunk(integrator, energy_fn, n_steps: int, constraints_batched: bool):
    """The jitted chunk, shared by every run of the same model (so a second run does not recompile)."""
    return jax.jit(make_ensemble_chunk(integrator, energy_fn, n_steps, constraints_batched=constraints_batched))


def _common_layout(tables: list[Neighbors], all_pairs: bool = False) -> list[Neighbors]:
    """Give per-member tables one static layout (the largest capacities), so they stack.

    ``all_pairs`` (padded batches) always takes the layout that tests every cluster pair.
    """
    capacity = max(t.capacity for t in tables)
    grids = {None if t.grid is None else tuple(t.grid[:3]) for t in tables}
    if len(grids) == 1 and None not in grids and not all_pairs:
        grid = next(iter(grids)) + (max(t.grid[3] for t in tables),)
        cell_capacity = max(t.cell_capacity for t in tables)
    else:  # different cell grids: every cluster a candidate (always exact)
        grid, cell_capacity = None, every_cluster_capacity(int(tables[0].idx.shape[0]))
    n_atoms = int(tables[0].idx.shape[0])
    excl_width = max(int(t.exclusions.shape[1]) for t in tables)
    return [dataclasses.replace(t, idx=jnp.asarray(_padding.pad_table(t.idx, n_atoms, n_atoms, capacity)),
                                exclusions=jnp.asarray(_padding.pad_table(t.exclusions, n_atoms, n_atoms, excl_width)),
                                grid=grid, cell_capacity=cell_capacity) for t in tables]


def _reallocate_all(carry: Carry, box, n_real, retry: int):
    """New tables for every member at the chunk's start positions, in one layout per table
    (every table of a summed potential's tuple; all-pairs tables are kept)."""
    positions = carry.state.positions

    def one_table(stacked: Neighbors) -> Neighbors:
        if stacked.dense:
            return stacked
        tables = []
        for m in range(positions.shape[0]):
            nb = _padding.unstack(stacked, m)
            fresh = reallocate(nb, positions[m], None if box is None else box[m], retry)
            if n_real is not None:
                fresh = _padding.mask_padding(fresh, int(n_real[m]))
            tables.append(dataclasses.replace(fresh, needed=jnp.maximum(fresh.needed, nb.needed)))
        return _padding.stack(_common_layout(tables, all_pairs=n_real is not None))

    return jax.tree_util.tree_map(one_table, carry.neighbors, is_leaf=is_table)


def _host_state(carry: Carry) -> dict:
    """The reported fields of every member as host numpy arrays (one transfer per report).

    With several processes (``jax.distributed``) each holds only its shards: they are
    gathered first, so every process sees all members.
    """
    st = carry.state
    fields = {"positions": st.positions, "velocities": st.velocities, "masses": st.masses,
              "potential_energy": st.potential_energy, "step": st.step}
    if carry.barostat is not None:  # NPT: each member's box changes from report to report
        fields["box"] = carry.barostat.box
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        fields = multihost_utils.process_allgather(fields, tiled=True)
    return {k: np.asarray(v) for k, v in fields.items()}


def _member_snapshot(ens: Ensemble, host: dict, m: int, dt_ps: float, final: bool = False) -> Snapshot:
    n = ens.members[m].n_atoms
    velocities = host["velocities"][m, :n].astype(np.float64)
    kin = 0.5 * float(np.sum(host["masses"][m, :n, None] * velocities * velocities))
    step = int(host["step"][m])
    box = host["box"][m] if "box" in host else None if ens.box is None else ens.box[m]
    return Snapshot(step=step, time_ps=step * dt_ps, positions=host["positions"][m, :n].astype(np.float64),
                    potential_energy=float(host["potential_energy"][m]), kinetic_energy=kin,
                    temperature=2.0 * kin / (ens.members[m].n_dof * BOLTZMANN),
                    box=None if box is None else np.asarray(box, np.float64), velocities=velocities,
                    final=final)


def _open_member_files(ens: Ensemble, out: str, report_every: int) -> list[list]:
    reporters = []
    for m, member in enumerate(ens.members):
        folder = os.path.join(out, MEMBER_DIR.format(m))
        os.makedirs(folder, exist_ok=True)
        system = ens.systems[member.system_index]
        positions = np.asarray(ens.carry.state.positions[m, : member.n_atoms], np.float64)
        write_pdb(os.path.join(folder, "topology.pdb"), system.topology, positions,
                  None if ens.box is None else np.asarray(ens.box[m]))
        reporters.append([StateDataReporter(os.path.join(folder, "state.csv"), report_every),
                          DCDReporter(os.path.join(folder, "trajectory.dcd"), report_every)])
    return reporters


@dataclasses.dataclass(frozen=True)
class _Limits:
    """What every chunk is checked against (per member; see :mod:`diffmd.md`)."""

    factor: float | None
    reference: np.ndarray  # (M,) [K]
    origin: np.ndarray  # (M, 3) [nm]
    radius: np.ndarray  # (M,) [nm]
    facts: RunFacts


def _limits(ens: Ensemble, factor: float | None) -> _Limits:
    """The temperature and position limits of every member, from the ensemble's starting state."""
    host = _host_state(ens.carry)
    n_dof = np.array([mb.n_dof for mb in ens.members], np.float64)
    kin = 0.5 * np.sum(host["masses"][..., None] * host["velocities"].astype(np.float64) ** 2, axis=(1, 2))
    start_t = temperatures(kin, n_dof)
    integrator = ens.settings.get("integrator", "langevin")
    reference = np.array([reference_temperature(integrator, mb.temperature, t) for mb, t in zip(ens.members, start_t)])
    origin, radius = [], []
    for m, mb in enumerate(ens.members):
        x = host["positions"][m, : mb.n_atoms].astype(np.float64)
        origin.append(x.mean(axis=0))
        radius.append(float(np.linalg.norm(x - origin[-1], axis=-1).max()))
    s = ens.settings
    facts = RunFacts(dt_ps=ens.dt, constraints=s.get("constraints"), hydrogen_mass=s.get("hydrogen_mass"))
    return _Limits(factor, reference, np.array(origin), np.array(radius), facts)


def _first_failure(ens: Ensemble, carry: Carry, obs, start: int, limits: _Limits) -> str | None:
    n_dof = np.array([mb.n_dof for mb in ens.members], np.float64)
    failure = first_failure(obs["potential_energy"], obs["kinetic_energy"], n_dof, start,
                            max_temperature_factor=limits.factor, reference_temperature=limits.reference)
    if failure is None:
        end = int(np.asarray(carry.state.step)[0])
        failure = position_failure(np.asarray(jax.device_get(carry.state.positions)), limits.origin, limits.radius,
                                   end, n_real=[mb.n_atoms for mb in ens.members])
    if failure is not None:
        m = failure.member
        return (f"member {m} (system {ens.members[m].system_index}, replica {ens.members[m].replica}), step "
                f"{failure.step}: {failure.what}. {advice(limits.facts)} Files written so far end at the last good "
                "report.")
    failed = np.asarray(carry.state.constraint_failed)
    if failed.any():
        m = int(np.argmax(failed))
        return (f"member {m}: a constraint solve did not converge in the chunk starting at step {start}. "
                f"{advice(limits.facts)}")
    return None


def simulate(ens: Ensemble, steps: int, *, report_every: int = 500, chunk_size: int | None = None,
             out: str | None = None, progress: bool | None = None, throw: bool = True,
             moves: Sequence[Callable] = (), devices=None,
             max_temperature_factor: float | None = DEFAULT_MAX_TEMPERATURE_FACTOR) -> EnsembleResult:
    """Run every member of ``ens`` for ``steps`` steps as one batched program.

    Args:
        ens: from ``diffmd.ensemble.prepare``.
        steps: steps per member.
        report_every: steps between reports (each member's state.csv rows and frames); the
            last step is always reported too.
        chunk_size: steps per jitted chunk (default ``report_every``; must divide it).
        out: folder for ``member-000/`` ... (``state.csv``, ``trajectory.dcd``,
            ``topology.pdb`` each) and ``ensemble.json`` (summary with aggregate ns/day);
            None writes nothing.
        progress: progress bar (None: only on a terminal).
        throw: raise ``SimulationError`` when a member fails (NaN or Inf energy, a temperature
            above ``max_temperature_factor`` times its reference, an atom leaving the system, a
            constraint failure), naming member, step and likely cause (else stop and set ``error``).
        moves: ensemble moves applied after every chunk, each
            ``move(ensemble, step) -> ensemble`` (e.g. ``diffmd.replica_exchange``); their
            ``log()`` (if any) ends up in ``move_log``.
        devices: devices to shard the member axis over (default all).
        max_temperature_factor: a member fails at a step whose kinetic temperature exceeds
            this multiple of its temperature (for ``'verlet'``, of the larger of that and its
            starting temperature), as in ``diffmd.simulate``; None turns the check off.

    Returns:
        ``EnsembleResult``.
    """
    if int(steps) != steps or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if int(report_every) != report_every or report_every < 1:
        raise InputError(f"report_every must be a positive number of steps, got {report_every!r}")
    factor = check_max_temperature_factor(max_temperature_factor)
    chunk = int(chunk_size or report_every)
    if chunk < 1 or report_every % chunk:
        raise InputError(f"chunk_size must divide report_every ({report_every}), got {chunk_size!r}")
    for mv in moves:
        every = getattr(mv, "every", None)
        if every is not None and every % chunk:
            raise InputError(f"move {getattr(mv, 'name', mv)!r} acts every {every} steps: that must be a "
                             f"multiple of chunk_size ({chunk})")
    n_members = ens.size
    mesh = member_mesh(n_members, devices)

    def place(e: Ensemble) -> Ensemble:
        return dataclasses.replace(
            e, carry=shard_members(e.carry, mesh, n_members), params=shard_members(e.params, mesh, n_members),
            terms=shard_members(e.terms, mesh, n_members), box=shard_members(e.box, mesh, n_members),
            n_real=shard_members(e.n_real, mesh, n_members),
            constraints=shard_members(e.constraints, mesh, n_members) if e.constraints_batched else e.constraints)

    ens = place(ens)

    def run_chunk(n, carry, e):
        fn = _compiled_chunk(e.integrator, e.energy_fn, n, e.constraints_batched)
        return fn(carry, e.params, e.terms, e.box, e.constraints, e.n_real)

    writer = out is not None and jax.process_index() == 0  # one process writes the files
    files = _open_member_files(ens, out, report_every) if writer else [[] for _ in ens.members]
    bar = ProgressReporter(report_every, enabled=progress) if progress is not False else None
    dt = ens.dt
    start = int(np.asarray(ens.carry.state.step)[0])
    for m, member in enumerate(ens.members):
        system = ens.systems[member.system_index]
        info = RunInfo(n_atoms=member.n_atoms, dt_ps=dt, start_step=start, total_steps=int(steps),
                       topology=system.topology, masses=np.asarray(system.masses), periodic=ens.box is not None)
        for r in files[m]:
            r.open(info)
    if bar is not None:
        bar.open(RunInfo(n_atoms=int(ens.carry.state.positions.shape[1]), dt_ps=dt, start_step=start,
                         total_steps=int(steps)))
    history = []
    limits = _limits(ens, factor)

    def record(e: Ensemble, final: bool = False):
        host = _host_state(e.carry)
        snaps = [_member_snapshot(e, host, m, dt, final) for m in range(n_members)]
        history.append([(s.step, s.potential_energy, s.kinetic_energy, s.temperature,
                         np.nan if s.box is None else abs(float(np.linalg.det(s.box)))) for s in snaps])
        for m, snap in enumerate(snaps):
            dispatch(files[m], snap)
        if bar is not None:
            dispatch([bar], snaps[0])

    def enlarge(e: Ensemble, new, retry: int) -> Ensemble:
        # some member's table was too small: enlarge every member's at the chunk's start positions and
        # boxes (a barostat's, under NPT) and replay the chunk for all
        tables = _reallocate_all(jax.device_get(e.carry), None if e.box is None else np.asarray(e.current_box),
                                 None if e.n_real is None else np.asarray(e.n_real), retry)
        return place(dataclasses.replace(e, carry=dataclasses.replace(e.carry, neighbors=tables)))

    def accept(e: Ensemble, new, step: int) -> Ensemble:
        e = dataclasses.replace(e, carry=new)
        for move in moves:
            e = move(e, step)
        return e

    hooks = ChunkHooks(
        run=lambda n, e: run_chunk(n, e.carry, e),
        overflowed=lambda c: any(np.any(np.asarray(t.overflow)) for t in neighbor_tables(c.neighbors)),
        reallocate=enlarge, check=lambda c, obs, first: _first_failure(ens, c, obs, first, limits),
        accept=accept, record=record, positions=lambda e: e.carry.state.positions)
    try:
        outcome = run_chunks(ens, int(steps), start=start, chunk_size=chunk, dt_ps=dt, hooks=hooks, throw=throw)
    finally:
        for rs in files:
            for r in rs:
                r.close()
        if bar is not None:
            bar.close()
    ens, error, clock, reallocations = outcome.state, outcome.error, outcome.clock, outcome.reallocations
    member_speed, wall = outcome.speed, outcome.wall
    h = np.array(history, np.float64).reshape(len(history), n_members, 5)
    log = {getattr(mv, "name", f"move{i}"): mv.log() for i, mv in enumerate(moves) if hasattr(mv, "log")}
    result = EnsembleResult(
        ensemble=ens, steps=h[:, 0, 0].astype(np.int64), potential_energy=h[:, :, 1], kinetic_energy=h[:, :, 2],
        total_energy=h[:, :, 1] + h[:, :, 2], temperature=h[:, :, 3], ns_per_day=member_speed * n_members,
        ns_per_day_member=member_speed, wall_seconds=wall, reallocations=reallocations, move_log=log, error=error,
        timed_steps=clock.timed_steps, timed_seconds=clock.timed_seconds,
        volume=None if np.isnan(h[:, :, 4]).all() else h[:, :, 4])
    if writer:
        _write_summary(os.path.join(out, SUMMARY_FILE), result, mesh)
    return result


def _write_summary(path: str, result: EnsembleResult, mesh: Mesh) -> None:
    ens = result.ensemble
    window = after_equilibration(result.steps, int(result.steps[-1]))
    members = [{"member": m, "folder": MEMBER_DIR.format(m), "system": ens.systems[mb.system_index].source,
                "system_index": mb.system_index, "replica": mb.replica, "n_atoms": mb.n_atoms,
                "temperature_k": mb.temperature, "seed": mb.seed,
                "mean_temperature_k": float(np.mean(result.temperature[window, m]))}
               for m, mb in enumerate(ens.members)]
    baro = ens.carry.barostat
    if baro is not None:  # NPT: each member's mean volume and barostat acceptance
        attempts, accepted = np.asarray(baro.total_attempts), np.asarray(baro.total_accepted)
        for m, entry in enumerate(members):
            entry.update(mean_volume_nm3=float(np.mean(result.volume[window, m])),
                         barostat_attempts=int(attempts[m]), barostat_accepted=int(accepted[m]))
    summary = {"members": len(members), "steps": int(result.steps[-1]) if len(result.steps) else 0,
               "mean_temperature_steps": [int(result.steps[window][0]), int(result.steps[window][-1])],
               "timed_steps": result.timed_steps, "timed_seconds": result.timed_seconds,
               "ns_per_day_aggregate": result.ns_per_day, "ns_per_day_per_member": result.ns_per_day_member,
               "wall_seconds": result.wall_seconds, "devices": int(mesh.devices.size),
               "device_kind": str(mesh.devices.flat[0].device_kind), "reallocations": result.reallocations,
               "moves": result.move_log, "error": result.error, "member_list": members}
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
        fh.write("\n")
