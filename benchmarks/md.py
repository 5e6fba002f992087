"""Benchmark ``md``: molecular-dynamics speed (ns/day) and peak memory, diffmd vs OpenMM.

    diffmd bench md [--systems t4l-vacuum,ala-water,t4l-obc2] [--repeats N] [--quick]
    diffmd bench md --systems dhfr-pme,dhfr-pme-hmr          # DHFR JAC, 2 fs and 4 fs (HMR)

Both engines run LangevinMiddle at 300 K, friction 1/ps, bonds to hydrogen constrained
(and rigid water), from the same coordinates (and the coordinate file's velocities where it
has them), each in its own worker process (see ``_harness``), so each peak memory is its
own. The timed unit is a block of ``--block`` steps (default 50; 10 for DHFR): diffmd runs
them as one jitted ``lax.scan`` chunk through ``diffmd.md.run_dynamics`` (neighbor
table kept current inside, as in production), OpenMM as ``LangevinMiddleIntegrator.step``.
Blocks are interleaved round by round and the ratio (diffmd ns/day over OpenMM ns/day) is
the median of per-round ratios. Before timing, each engine runs a short equilibration
whose mean temperature is reported, so a speed is never reported for a run that blew up.

Precision: ``diffmd-mixed`` is float32 forces with float64 positions, velocities and sums;
``diffmd-single`` float32 throughout. OpenMM's CPU platform has no ``Precision``
property (only ``Threads`` and ``DeterministicForces``): it computes forces in single
precision, the closest to diffmd's mixed. ``openmm-cuda`` (run by default only when JAX
runs on a GPU; n/a where OpenMM has no CUDA platform) is set to ``Precision=mixed``.

On a GPU the run also prints the ratio of diffmd-mixed's DHFR 4 fs (HMR) speed to
OpenMM 8's published H100 figure for the same benchmark (about 1,700 ns/day).

Systems:
- ``t4l-vacuum``: T4 lysozyme L99A + p-xylene (2,621 atoms), vacuum, 1.0 nm
  non-periodic reaction-field cutoff.
- ``ala-water``: alanine dipeptide in TIP3P water (2,269 atoms, periodic),
  reaction-field cutoff 0.9 nm, rigid water.
- ``t4l-obc2``: T4 lysozyme in GB-OBC2 implicit solvent, no cutoff.
- ``dhfr-pme``: DHFR JAC (23,558 atoms), PME 0.9 nm (error tolerance 5e-4), 2 fs.
- ``dhfr-pme-hmr``: the same at 4 fs with hydrogen masses repartitioned to 1.5 amu.
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
from ._systems import dhfr_files

# Per-system keys besides the description: ``data`` (a ``diffmd.data`` helper, or
# ``"dhfr"``), ``nonbonded`` (default ``"cutoff"``), ``cutoff`` [nm], ``implicit``,
# ``dt`` [ps] (default DT), ``hydrogen_mass`` [amu] (HMR), and defaults for the
# command's ``block``, ``equilibrate`` and ``repeats`` (large systems take fewer steps).
SYSTEMS = {
    "t4l-vacuum": {"description": "T4 lysozyme L99A + p-xylene, vacuum, 1.0 nm reaction-field cutoff (non-periodic)",
                   "data": "t4_lysozyme", "cutoff": 1.0},
    "ala-water": {"description": "alanine dipeptide in TIP3P water, periodic reaction field 0.9 nm, rigid water",
                  "data": "alanine_dipeptide_explicit", "cutoff": 0.9},
    "t4l-obc2": {"description": "T4 lysozyme L99A + p-xylene, GB-OBC2 implicit solvent (ACE), no cutoff",
                 "data": "t4_lysozyme", "nonbonded": "nocutoff", "cutoff": None, "implicit": "obc2"},
    # a small PME system: the DHFR settings on 2,269 atoms (smoke tests, profile-step trials)
    "ala-water-pme": {"description": "alanine dipeptide in TIP3P water, PME 0.9 nm (tolerance 5e-4), rigid water",
                      "data": "alanine_dipeptide_explicit", "nonbonded": "pme", "cutoff": 0.9},
    # DHFR: blocks of 10 steps (about 10 s each for diffmd on 2 CPU cores), so that the two
    # systems with three engines take a few minutes; each timed block spans about one
    # neighbor rebuild at 2 fs and more at 4 fs (the table reports how many blocks rebuilt)
    "dhfr-pme": {"description": "DHFR JAC (23,558 atoms) in water, PME 0.9 nm (tolerance 5e-4), rigid water, 2 fs",
                 "data": "dhfr", "nonbonded": "pme", "cutoff": 0.9, "dt": 0.002,
                 "block": 10, "equilibrate": 1, "repeats": 3},
    "dhfr-pme-hmr": {"description": "DHFR JAC, PME 0.9 nm (tolerance 5e-4), rigid water, hydrogen mass 1.5 amu, 4 fs",
                     "data": "dhfr", "nonbonded": "pme", "cutoff": 0.9, "dt": 0.004, "hydrogen_mass": 1.5,
                     "block": 10, "equilibrate": 1, "repeats": 3},
}
ENGINES = ("diffmd-mixed", "diffmd-single", "openmm-cpu", "openmm-cuda")
CPU_ENGINES = ("diffmd-mixed", "diffmd-single", "openmm-cpu")
DT, TEMPERATURE, FRICTION = 0.002, 300.0, 1.0
EWALD_TOLERANCE = 5e-4  # OpenMM's default, and diffmd's
# OpenMM 8's published DHFR (JAC, PME, 4 fs with HMR) speed on one H100 [ns/day]
# (1,704.5 in OpenMM 8.4's table; 1,719.9 on an H200).
OPENMM_PUBLISHED_H100 = 1700.0


def _files(system: str):
    import diffmd.data

    data = SYSTEMS[system]["data"]
    return dhfr_files() if data == "dhfr" else getattr(diffmd.data, data)()


def system_dt(system: str) -> float:
    """Time step of a benchmark system [ps]."""
    return float(SYSTEMS[system].get("dt", DT))


def prepare_diffmd(system: str, precision: str, seed: int = 1):
    """``(System, Prepared)`` for a benchmark system with the benchmark's MD settings.

    Sets JAX's float64 switch for ``precision`` (call it first in a fresh process).
    """
    import jax

    jax.config.update("jax_enable_x64", precision != "single")
    import diffmd
    from diffmd.md import prepare

    cfg = SYSTEMS[system]
    mol = diffmd.load_amber(*_files(system))
    prep = prepare(mol, dt=system_dt(system), temperature=TEMPERATURE, friction=FRICTION, constraints="hbonds",
                   rigid_water=True, hydrogen_mass=cfg.get("hydrogen_mass"), nonbonded=cfg.get("nonbonded", "cutoff"),
                   cutoff=cfg["cutoff"], implicit_solvent=cfg.get("implicit"), precision=precision, seed=seed)
    return mol, prep


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

        start = time.perf_counter()
        system, self.prep = prepare_diffmd(self.spec["system"], self.spec["precision"])
        prepare_s = time.perf_counter() - start
        self.dt = system_dt(self.spec["system"])
        self.fns = {}
        self.rebuilt = []  # per run() call: did the neighbor table change (jax bools, read later)
        start = time.perf_counter()
        self.run(1)  # compile
        nb = self.prep.carry.neighbors
        return {"n_atoms": system.n_atoms, "prepare_s": prepare_s, "compile_s": time.perf_counter() - start,
                "capacity": None if nb is None else int(nb.capacity), "device": str(jax.devices()[0]),
                "reallocations": int(self.last.reallocations)}

    def run(self, n: int) -> None:
        import jax.numpy as jnp

        from diffmd.md import run_dynamics

        p = self.prep
        block = self.spec["block"]
        res = run_dynamics(p.integrator, p.energy_fn, p.params, p.carry, n * block, box=p.box,
                           constraints=p.constraints, n_dof=p.n_dof, dt_ps=self.dt, chunk_size=block,
                           chunk_fns=self.fns)
        old, new = p.carry.neighbors, res.carry.neighbors
        if old is not None and not old.dense:
            # dispatched, not waited for: a rebuild moves the table's reference positions
            self.rebuilt.append((n, jnp.any(old.reference_positions != new.reference_positions)))
        self.prep = p._replace(carry=res.carry)
        self.last = res

    def rebuilds(self, last: int) -> dict:
        """How many of the last ``last`` ``run`` calls rebuilt the neighbor table at least once."""
        calls = self.rebuilt[-last:] if last > 0 else []
        return {"calls": len(calls), "blocks": sum(n for n, _ in calls),
                "calls_with_rebuild": sum(bool(r) for _, r in calls)}

    def temperature(self, blocks: int) -> dict:
        self.run(blocks)
        return {"mean_k": float(np.mean(self.last.temperature[1:])), "steps": int(self.last.steps[-1])}


def openmm_system(system: str):
    """``(openmm.System, AmberInpcrdFile)`` with the benchmark's settings for ``system``."""
    from openmm import app, unit

    prmtop, crd = _files(system)
    coords = app.AmberInpcrdFile(crd)
    periodic = coords.boxVectors is not None
    # the coordinate file's box wins over the prmtop's (DHFR's differ): PME sizes its grid from it
    top = app.AmberPrmtopFile(prmtop, periodicBoxVectors=coords.boxVectors)
    cfg = SYSTEMS[system]
    kwargs = {"constraints": app.HBonds, "rigidWater": True}
    method = cfg.get("nonbonded", "cutoff")
    if method == "nocutoff":
        kwargs["nonbondedMethod"] = app.NoCutoff
    elif method == "pme":
        kwargs.update(nonbondedMethod=app.PME, nonbondedCutoff=cfg["cutoff"] * unit.nanometer,
                      ewaldErrorTolerance=EWALD_TOLERANCE)
    else:
        kwargs["nonbondedMethod"] = app.CutoffPeriodic if periodic else app.CutoffNonPeriodic
        kwargs["nonbondedCutoff"] = cfg["cutoff"] * unit.nanometer
    if cfg.get("implicit"):
        kwargs["implicitSolvent"] = {"obc2": app.OBC2}[cfg["implicit"]]
    if cfg.get("hydrogen_mass"):
        kwargs["hydrogenMass"] = cfg["hydrogen_mass"] * unit.amu  # waters are left alone, as in diffmd
    return top.createSystem(**kwargs), coords


class OpenMMMD:
    """OpenMM, CPU platform (all cores) or CUDA (mixed precision): ``LangevinMiddleIntegrator.step(block)``."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self) -> dict:
        try:
            import openmm
        except ImportError as exc:
            raise h.NotAvailable(f"OpenMM is not installed ({exc})") from exc

        name = self.spec["platform"]
        try:
            platform = openmm.Platform.getPlatformByName(name)
        except Exception as exc:  # OpenMMException: the platform was not built or has no driver
            raise h.NotAvailable(f"OpenMM has no {name} platform here ({exc})") from exc
        system, coords = openmm_system(self.spec["system"])
        dt = system_dt(self.spec["system"])
        self.integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, FRICTION, dt)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        # the CPU platform has no Precision property (it computes forces in single precision)
        properties = {"Threads": str(cores)} if name == "CPU" else {"Precision": "mixed"}
        try:
            self.context = openmm.Context(system, self.integrator, platform, properties)
        except Exception as exc:
            if name != "CPU":
                raise h.NotAvailable(f"OpenMM {name} context failed: {exc}") from exc
            raise
        if coords.boxVectors is not None:
            self.context.setPeriodicBoxVectors(*coords.boxVectors)
        self.context.setPositions(coords.positions)
        if getattr(coords, "velocities", None) is not None:
            self.context.setVelocities(coords.velocities)  # as diffmd, which starts from them
        else:
            self.context.setVelocitiesToTemperature(TEMPERATURE, 1)
        self.n_dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3
        self.run(1)
        return {"n_atoms": system.getNumParticles(), "platform": name,
                "properties": {k: platform.getPropertyValue(self.context, k) for k in platform.getPropertyNames()}}

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


def engine_spec(name: str, system: str, block: int) -> dict:
    """What a worker needs to build engine ``name`` (``family-variant``) for ``system``."""
    family, _, variant = name.partition("-")
    spec = {"name": name, "family": family, "system": system, "block": int(block)}
    if family == "diffmd":
        spec["precision"] = variant
    else:
        spec.update(platform={"cpu": "CPU", "cuda": "CUDA"}[variant], precision="mixed")
    return spec


def system_settings(system: str, args) -> dict:
    """Block, equilibration blocks and rounds for ``system``: the command's, else the system's defaults."""
    cfg = SYSTEMS[system]
    equilibrate, repeats = cfg.get("equilibrate", 10), cfg.get("repeats", 5)
    return {"block": args.block or cfg.get("block", 50),
            "equilibrate": args.equilibrate or (min(2, equilibrate) if args.quick else equilibrate),
            "repeats": args.repeats or (min(2, repeats) if args.quick else repeats)}


def run_system(system: str, engines: list, args, log) -> dict:
    cfg = system_settings(system, args)
    dt = system_dt(system)
    out = {"description": SYSTEMS[system]["description"], "dt_ps": dt, "settings": cfg, "engines": {}}
    workers = {name: h.Worker("md", engine_spec(name, system, cfg["block"]), timeout=args.timeout)
               for name in engines}
    try:
        log(f"[{system}] {out['description']}")
        for w in workers.values():
            w.wait_ready()
        live = {}
        for name, w in workers.items():
            rec = out["engines"][name] = {}
            try:
                rec["setup"] = w.call("setup")
                rec["equilibration"] = w.call("temperature", blocks=cfg["equilibrate"])
                live[name] = w
                log(f"  {name}: set up; mean temperature {rec['equilibration']['mean_k']:.1f} K over "
                    f"{rec['equilibration']['steps']} steps")
            except h.NotAvailable as exc:
                rec.update(status="n/a", reason=str(exc).splitlines()[0])
                w.close()
                log(f"  {name}: n/a ({exc})")
            except h.WorkerError as exc:
                rec.update(status="error", reason=str(exc).splitlines()[0])
                w.close()
                log(f"  {name}: failed: {exc}")
        if live:
            timing = h.interleaved(live, cfg["repeats"], args.round_seconds)
            for name in live:
                secs = timing[name]["seconds"]
                rec = out["engines"][name]
                rec["timing"] = timing[name]
                rec["ns_per_day"] = cfg["block"] * dt * 1e-3 * 86400.0 / statistics.median(secs)
                rec["memory"] = live[name].memory()
                if name.startswith("diffmd"):
                    # the warm-up call and one call per round
                    rec["rebuilds"] = live[name].call("rebuilds", last=cfg["repeats"] + 1)
            for base, key in (("openmm-cpu", "x_openmm"), ("openmm-cuda", "x_openmm_cuda")):
                if base in live:
                    for name in live:
                        out["engines"][name][key] = h.paired_ratio(timing[base]["seconds"], timing[name]["seconds"])
    finally:
        for w in workers.values():
            w.close()
    return out


def _mib(value) -> str:
    return "" if value is None else f"{value:.0f}"


def system_table(system: str, rec: dict) -> str:
    engines = rec["engines"]
    cuda = any("x_openmm_cuda" in e for e in engines.values())
    device = any("device_peak_mib" in e.get("memory", {}) for e in engines.values())
    headers = ["engine", "ns/day", "x OpenMM CPU"] + (["x OpenMM CUDA"] if cuda else []) + \
        ["T (K)", "peak RSS MiB"] + (["device peak MiB"] if device else []) + ["timed blocks that rebuilt the list"]
    rows = []
    for name, e in engines.items():
        if "ns_per_day" not in e:
            rows.append([name, f"{e.get('status', 'failed')}: {e.get('reason', '')}"])
            continue
        row = [name, f"{e['ns_per_day']:.3g}", f"{e['x_openmm']:.2f}" if "x_openmm" in e else "n/a"]
        if cuda:
            row.append(f"{e['x_openmm_cuda']:.3g}" if "x_openmm_cuda" in e else "n/a")
        row += [f"{e['equilibration']['mean_k']:.0f}", _mib(e["memory"].get("peak_mib"))]
        if device:
            row.append(_mib(e["memory"].get("device_peak_mib")))
        rb = e.get("rebuilds")
        row.append(f"{rb['calls_with_rebuild']} of {rb['calls']} ({rb['blocks']} blocks)" if rb else "")
        rows.append(row)
    s = rec["settings"]
    return (f"**{system}**: {rec['description']}; blocks of {s['block']} steps ({s['block'] * rec['dt_ps'] * 1e3:g} fs), "
            f"{s['repeats']} rounds after {s['equilibrate']} equilibration block(s)\n\n"
            + h.markdown_table(headers, rows))


def published_ratio_line(record: dict) -> str | None:
    """On a GPU: diffmd-mixed's DHFR 4 fs speed over OpenMM 8's published H100 figure."""
    env = record["environment"]
    if env.get("jax_backend") in (None, "cpu"):
        return None
    rec = record["systems"].get("dhfr-pme-hmr", {}).get("engines", {}).get("diffmd-mixed", {})
    if "ns_per_day" not in rec:
        return None
    ours = rec["ns_per_day"]
    record["published_ratio"] = {"device": env["devices"][0], "diffmd_mixed_ns_per_day": ours,
                                 "openmm_published_h100_ns_per_day": OPENMM_PUBLISHED_H100,
                                 "ratio": ours / OPENMM_PUBLISHED_H100}
    return (f"DHFR 4 fs (HMR) on {env['devices'][0]}: diffmd-mixed {ours:.4g} ns/day = "
            f"{ours / OPENMM_PUBLISHED_H100:.3f} x OpenMM 8's published H100 figure (about "
            f"{OPENMM_PUBLISHED_H100:,.0f} ns/day; 1,704.5 in OpenMM 8.4's table, 1,719.9 on an H200)")


def default_engines() -> list:
    """diffmd mixed and single and OpenMM CPU; plus OpenMM CUDA when JAX runs on a GPU."""
    import jax

    return list(CPU_ENGINES) + (["openmm-cuda"] if jax.default_backend() == "gpu" else [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench md", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated from {', '.join(SYSTEMS)}")
    p.add_argument("--engines", default=None,
                   help=f"comma-separated from {', '.join(ENGINES)} (default {','.join(CPU_ENGINES)}, "
                        "plus openmm-cuda when JAX runs on a GPU)")
    p.add_argument("--block", type=int, default=None, help="steps per timed unit (default 50; 10 for DHFR)")
    p.add_argument("--equilibrate", type=int, default=None,
                   help="blocks before timing (default 10, 1 for DHFR; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved rounds (default 5, 3 for DHFR; 2 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None, help="seconds per engine and round (default 2)")
    p.add_argument("--quick", action="store_true", help="short smoke test; not recorded unless --results")
    h.add_output_arguments(p)
    return p


def main(argv=None) -> int:
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    engines = [e for e in args.engines.split(",") if e] if args.engines else default_engines()
    for s in systems:
        if s not in SYSTEMS:
            raise InputError(f"unknown system {s!r}: choose from {', '.join(SYSTEMS)}")
    for e in engines:
        if e not in ENGINES:
            raise InputError(f"unknown engine {e!r}: choose from {', '.join(ENGINES)}")
    for flag in ("block", "equilibrate", "repeats"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    args.round_seconds = args.round_seconds or (0.2 if args.quick else 2.0)

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
    env["source_end"] = h.source_fingerprint()
    settings = ("LangevinMiddle 300 K, 1/ps, H-bond constraints, rigid water (time step per system); "
                f"interleaved rounds of ~{args.round_seconds} s (at least one block) per engine; ns/day from the "
                "median block time; x OpenMM is the median of per-round ratios (higher is faster); peak RSS is "
                "each engine's own process (VmHWM), device peak from JAX's memory_stats on a GPU. OpenMM CPU: "
                "Threads = usable cores, no Precision property (single-precision forces); OpenMM CUDA: "
                "Precision=mixed.")
    body = "\n\n".join(system_table(s, r) if "error" not in r else f"**{s}**: failed: {r['error'].splitlines()[0]}"
                       for s, r in record["systems"].items())
    ratio = published_ratio_line(record)
    if ratio:
        body += "\n\n" + ratio
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
