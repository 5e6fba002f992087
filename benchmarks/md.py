"""Benchmark ``md``: molecular-dynamics speed (ns/day), diffmd vs OpenMM's CPU platform.

    diffmd bench md [--systems t4l-vacuum,ala-water,t4l-obc2] [--repeats N] [--quick]

Both engines run LangevinMiddle at 300 K, friction 1/ps, 2 fs, bonds to hydrogen
constrained (and rigid water), from the same coordinates, each in its own worker
process (see ``_harness``). The timed unit is a block of ``--block`` steps (default 50):
diffmd runs them as one jitted ``lax.scan`` chunk through ``diffmd._runner.run_dynamics``
(neighbor table kept current inside, as in production), OpenMM as
``LangevinMiddleIntegrator.step(block)``. Blocks are interleaved round by round and the
ratio (diffmd ns/day over OpenMM ns/day) is the median of per-round ratios. Before
timing, each engine runs a short equilibration whose mean temperature is reported, so a
speed is never reported for a run that blew up.

Systems:
- ``t4l-vacuum``: T4 lysozyme L99A + p-xylene (2,621 atoms), vacuum, 1.0 nm
  non-periodic reaction-field cutoff.
- ``ala-water``: alanine dipeptide in TIP3P water (2,269 atoms, periodic),
  reaction-field cutoff 0.9 nm, rigid water.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

from . import _harness as h

SYSTEMS = {
    "t4l-vacuum": {"description": "T4 lysozyme L99A + p-xylene, vacuum, 1.0 nm reaction-field cutoff (non-periodic)",
                   "data": "t4_lysozyme", "cutoff": 1.0},
    "ala-water": {"description": "alanine dipeptide in TIP3P water, periodic reaction field 0.9 nm, rigid water",
                  "data": "alanine_dipeptide_explicit", "cutoff": 0.9},
    "t4l-obc2": {"description": "T4 lysozyme L99A + p-xylene, GB-OBC2 implicit solvent (ACE), no cutoff",
                 "data": "t4_lysozyme", "nonbonded": "nocutoff", "cutoff": None, "implicit": "obc2"},
}
ENGINES = ("diffmd-mixed", "diffmd-single", "openmm-cpu")
DT, TEMPERATURE, FRICTION = 0.002, 300.0, 1.0


def _files(system: str):
    import diffmd.data

    return getattr(diffmd.data, SYSTEMS[system]["data"])()


def make_engine(spec: dict):
    """Build the engine a worker serves (called in the worker process)."""
    if spec["family"] == "diffmd":
        return DiffmdMD(spec)
    return OpenMMMD(spec)


class DiffmdMD:
    """diffmd: ``prepare`` + ``run_dynamics`` in blocks of ``block`` steps (one chunk each)."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self) -> dict:
        import time

        import jax

        jax.config.update("jax_enable_x64", self.spec["precision"] != "single")
        import diffmd
        from diffmd.simulate import prepare

        system = diffmd.load_amber(*_files(self.spec["system"]))
        cfg = SYSTEMS[self.spec["system"]]
        self.prep = prepare(system, dt=DT, temperature=TEMPERATURE, friction=FRICTION, constraints="hbonds",
                            nonbonded=cfg.get("nonbonded", "cutoff"), cutoff=cfg["cutoff"],
                            implicit_solvent=cfg.get("implicit"), precision=self.spec["precision"], seed=1)
        self.fns = {}
        start = time.perf_counter()
        self.run(1)  # compile
        return {"n_atoms": system.n_atoms, "compile_s": time.perf_counter() - start,
                "capacity": int(self.prep.carry.neighbors.capacity)}

    def run(self, n: int) -> None:
        from diffmd._runner import run_dynamics

        p = self.prep
        block = self.spec["block"]
        res = run_dynamics(p.integrator, p.energy_fn, p.params, p.carry, n * block, box=p.box,
                           constraints=p.constraints, n_dof=p.n_dof, dt_ps=DT, chunk_size=block, chunk_fns=self.fns)
        self.prep = p._replace(carry=res.carry)
        self.last = res

    def temperature(self, blocks: int) -> dict:
        self.run(blocks)
        return {"mean_k": float(np.mean(self.last.temperature[1:])), "steps": int(self.last.steps[-1])}


class OpenMMMD:
    """OpenMM CPU platform (all cores): ``LangevinMiddleIntegrator.step(block)``."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self) -> dict:
        import openmm
        from openmm import app, unit

        prmtop, crd = _files(self.spec["system"])
        top = app.AmberPrmtopFile(prmtop)
        coords = app.AmberInpcrdFile(crd)
        periodic = coords.boxVectors is not None
        cfg = SYSTEMS[self.spec["system"]]
        kwargs = {"constraints": app.HBonds, "rigidWater": True}
        if cfg.get("nonbonded", "cutoff") == "nocutoff":
            kwargs["nonbondedMethod"] = app.NoCutoff
        else:
            kwargs["nonbondedMethod"] = app.CutoffPeriodic if periodic else app.CutoffNonPeriodic
            kwargs["nonbondedCutoff"] = cfg["cutoff"] * unit.nanometer
        if cfg.get("implicit"):
            kwargs["implicitSolvent"] = {"obc2": app.OBC2}[cfg["implicit"]]
        system = top.createSystem(**kwargs)
        self.integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, FRICTION, DT)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        platform = openmm.Platform.getPlatformByName("CPU")
        self.context = openmm.Context(system, self.integrator, platform, {"Threads": str(cores)})
        if periodic:
            self.context.setPeriodicBoxVectors(*coords.boxVectors)
        self.context.setPositions(coords.positions)
        self.context.setVelocitiesToTemperature(TEMPERATURE, 1)
        self.n_dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3
        self.run(1)
        return {"n_atoms": system.getNumParticles(), "threads": cores}

    def run(self, n: int) -> None:
        self.integrator.step(n * self.spec["block"])
        self.context.getState(getEnergy=False)  # wait for the steps to finish

    def temperature(self, blocks: int) -> dict:
        from openmm import unit

        temps = []
        for _ in range(blocks):
            self.run(1)
            ke = self.context.getState(getEnergy=True).getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            temps.append(2 * ke / (self.n_dof * 0.008314462618))
        return {"mean_k": float(np.mean(temps)), "steps": blocks * self.spec["block"]}


def run_system(system: str, engines: list, args, log) -> dict:
    out = {"description": SYSTEMS[system]["description"], "engines": {}}
    workers = {}
    for name in engines:
        family, _, precision = name.partition("-")
        spec = {"name": name, "family": family, "precision": precision if family == "diffmd" else "mixed",
                "system": system, "block": args.block}
        workers[name] = h.Worker("md", spec, timeout=args.timeout)
    try:
        log(f"[{system}] {out['description']}")
        for w in workers.values():
            w.wait_ready()
        live = {}
        for name, w in workers.items():
            rec = out["engines"][name] = {}
            try:
                rec["setup"] = w.call("setup")
                rec["equilibration"] = w.call("temperature", blocks=args.equilibrate)
                live[name] = w
                log(f"  {name}: set up; mean temperature {rec['equilibration']['mean_k']:.1f} K over "
                    f"{rec['equilibration']['steps']} steps")
            except (h.NotAvailable, h.WorkerError) as exc:
                rec.update(status="error", reason=str(exc).splitlines()[0])
                w.close()
                log(f"  {name}: failed: {exc}")
        if live:
            timing = h.interleaved(live, args.repeats, args.round_seconds)
            for name in live:
                secs = timing[name]["seconds"]
                rec = out["engines"][name]
                rec["timing"] = timing[name]
                rec["ns_per_day"] = args.block * DT * 1e-3 * 86400.0 / statistics.median(secs)
                rec["memory"] = live[name].memory()
            if "openmm-cpu" in live:
                for name in live:
                    out["engines"][name]["x_openmm"] = h.paired_ratio(timing["openmm-cpu"]["seconds"],
                                                                     timing[name]["seconds"])
    finally:
        for w in workers.values():
            w.close()
    return out


def system_table(system: str, rec: dict) -> str:
    rows = []
    for name, e in rec["engines"].items():
        if "ns_per_day" not in e:
            reason = e.get("reason", "").split(": ", 1)[-1]
            rows.append([name, f"failed: {reason}", "", "", ""])
            continue
        rows.append([name, f"{e['ns_per_day']:.3g}", f"{e.get('x_openmm', float('nan')):.2f}",
                     f"{e['equilibration']['mean_k']:.0f}", f"{e['memory'].get('peak_mib', 0):.0f}"])
    return f"**{system}**: {rec['description']}\n\n" + h.markdown_table(
        ["engine", "ns/day", "x OpenMM CPU", "T (K)", "peak MiB"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench md", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated from {', '.join(SYSTEMS)}")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated from {', '.join(ENGINES)}")
    p.add_argument("--block", type=int, default=50, help="steps per timed unit (default 50)")
    p.add_argument("--equilibrate", type=int, default=None, help="blocks before timing (default 10; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; 2 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None, help="seconds per engine and round (default 2)")
    p.add_argument("--quick", action="store_true", help="short smoke test; not recorded unless --results")
    p.add_argument("--results", default=None, help=f"Markdown file to append to (default {h.RESULTS})")
    p.add_argument("--no-record", action="store_true", help="do not append to a results file")
    p.add_argument("--json", default=None, help="also write the full record as JSON here")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for any one worker step")
    return p


def main(argv=None) -> int:
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    for s in systems:
        if s not in SYSTEMS:
            raise InputError(f"unknown system {s!r}: choose from {', '.join(SYSTEMS)}")
    for e in engines:
        if e not in ENGINES:
            raise InputError(f"unknown engine {e!r}: choose from {', '.join(ENGINES)}")
    if args.block < 1:
        raise InputError(f"--block must be >= 1, got {args.block}")
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.round_seconds = args.round_seconds or (0.2 if args.quick else 2.0)
    args.equilibrate = args.equilibrate or (2 if args.quick else 10)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    env = h.environment()
    record = {"benchmark": "md", "environment": env, "systems": {}}
    for system in systems:
        try:
            record["systems"][system] = run_system(system, engines, args, log)
        except (h.WorkerError, OSError) as exc:
            log(f"[{system}] failed: {exc}")
            record["systems"][system] = {"error": str(exc)}
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    settings = (f"LangevinMiddle 300 K, 1/ps, 2 fs, H-bond constraints, rigid water; blocks of {args.block} steps, "
                f"{args.repeats} interleaved rounds of ~{args.round_seconds} s per engine; ns/day from the median "
                "block time; x OpenMM CPU is the median of per-round ratios (higher is faster).")
    body = "\n\n".join(system_table(s, r) if "error" not in r else f"**{s}**: failed: {r['error'].splitlines()[0]}"
                       for s, r in record["systems"].items())
    print("\n".join(h.environment_lines(env)) + "\n\n" + settings + "\n\n" + body)
    if not args.no_record and (args.results or not args.quick):
        path = args.results or h.RESULTS
        command = "diffmd bench md " + " ".join(shlex.quote(a) for a in (argv or []))
        h.append_results(path, "MD ns/day" + (" (quick)" if args.quick else ""), env, settings + "\n\n" + body,
                         command=command.strip())
        log(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=float))
    return 0
