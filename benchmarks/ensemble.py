"""Benchmark ``ensemble``: aggregate ns/day against batch size, diffmd ensembles vs OpenMM one after another.

    diffmd bench ensemble                              # CPU: ala 1..256, T4L 1..4; GPU: the full sweep
    diffmd bench ensemble --full                       # the full sweep anywhere: ala 1..1024, T4L 1..64
    diffmd bench ensemble --ala 1,8,64 --t4l 1,2 --steps 50

Systems: alanine dipeptide (22 atoms) in vacuum, and T4 lysozyme L99A + p-xylene (2,621
atoms) in GB-OBC2 implicit solvent (vacuum if the ensemble engine refuses OBC2), both
without a cutoff. Settings: LangevinMiddle at 300 K, friction 1/ps, 2 fs, H-bond
constraints; diffmd in mixed precision.

- **diffmd**: for each batch size R, ``diffmd.ensemble.prepare`` R replicas and
  ``diffmd.ensemble.simulate`` them in ``1 + --chunks`` chunks of S steps (one report per
  chunk, no files). ``simulate``'s ns/day excludes the first chunk, which compiles; so the
  aggregate ns/day (R x the simulated time of one member per day) covers the timed chunks
  and the per-chunk host reports of every member, as a user's run pays them. The table
  also gives the time of one such report (all members' snapshots, timed separately) and
  the stepping speed with the reports taken out. All replicas start from the same
  positions and one Maxwell-Boltzmann draw (set as the system's velocities, which skips
  ``prepare``'s per-replica draw) and get their own Langevin noise (seed + member).
- **OpenMM CPU**: the same replicas run one after another cost R times one run, so their
  aggregate ns/day *equals one run's ns/day*. It is measured right after each diffmd size
  (about ``--openmm-seconds`` per thread setting) with ``Threads=1`` and with every usable
  core (median of 3 slices each, the settings alternating), and the faster is the
  baseline (on a small molecule one thread is the faster).
- **Memory per replica**: each system's sizes run in ascending order in one worker
  process. On a GPU: JAX's device ``peak_bytes_in_use`` after the size minus
  ``bytes_in_use`` before it (the peak only grows, so ascending sizes keep it each size's
  own); elsewhere the process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs``
  before each size) minus its RSS before. Both include set-up and compilation, so small
  sizes show a fixed cost (the first size also one-time costs of the process, such as
  the first compilation, so the marginal figure after it can even be negative); the
  "marginal" column is the growth per added replica between consecutive sizes, the
  figure that matters for large batches.

Results go to ``RESULTS.md`` (one section per run) and the scaling plot to
``benchmarks/ensemble_scaling.png`` (needs matplotlib, an optional dependency of this
benchmark only; without it the plot is skipped with a message). The default sizes are
capped on a CPU so that the sweep takes about ten minutes on two cores; on a GPU the same
command (``diffmd bench ensemble``) runs the full sweep and reports device memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from . import _harness as h

DT, TEMPERATURE, FRICTION = 0.002, 300.0, 1.0
PLOT = Path(__file__).resolve().parent / "ensemble_scaling.png"
SYSTEMS = {
    "ala": {"description": "alanine dipeptide (22 atoms), vacuum, no cutoff", "data": "alanine_dipeptide",
            "implicit": None},
    "t4l": {"description": "T4 lysozyme L99A + p-xylene (2,621 atoms), GB-OBC2, no cutoff", "data": "t4_lysozyme",
            "implicit": "obc2"},
}
FULL_SIZES = {"ala": [1, 4, 16, 64, 256, 1024], "t4l": [1, 2, 4, 8, 16, 64]}
CPU_SIZES = {"ala": [1, 4, 16, 64, 256], "t4l": [1, 2, 4]}
# Steps per chunk: (replica-steps per chunk, fewest, most), so that a chunk is roughly a
# second or more of work at every size; a GPU's step costs about the same from 1 to many
# replicas, so its chunks are long at every size.
CHUNK_STEPS = {"cpu": {"ala": (8192, 8, 2000), "t4l": (16, 2, 16)},
               "gpu": {"ala": (1 << 20, 1000, 1000), "t4l": (12800, 100, 500)}}


def chunk_steps(system: str, replicas: int, backend: str, override: int | None = None) -> int:
    """Steps per chunk for ``replicas`` replicas of ``system`` on ``backend`` (``--steps`` wins)."""
    if override:
        return int(override)
    per, low, high = CHUNK_STEPS["cpu" if backend == "cpu" else "gpu"][system]
    return int(min(high, max(low, per // replicas)))


def _files(system: str):
    import diffmd.data

    return getattr(diffmd.data, SYSTEMS[system]["data"])()


def make_engine(spec: dict):
    """Build the engine a worker serves (called in the worker process)."""
    return DiffmdEnsemble(spec) if spec["family"] == "diffmd" else OpenMMSequential(spec)


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _device_bytes() -> dict:
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return stats or {}


def _report_seconds(ens) -> float | None:
    """Seconds of one host report of every member, as ``simulate`` makes after each chunk.

    Uses the runner's private helpers (``_host_state``, ``_member_snapshot``); None if
    they have changed shape, and the "stepping only" column stays empty.
    """
    from diffmd.ensemble import _runner as runner

    try:
        start = time.perf_counter()
        host = runner._host_state(ens.carry)
        for m in range(ens.size):
            runner._member_snapshot(ens, host, m, DT)
        return time.perf_counter() - start
    except (AttributeError, TypeError, KeyError):
        return None


class DiffmdEnsemble:
    """diffmd: ``ensemble.prepare`` + ``ensemble.simulate`` of R replicas, one size per ``measure``."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self) -> dict:
        import jax

        jax.config.update("jax_enable_x64", True)  # mixed precision keeps float64 positions and sums
        import diffmd
        from diffmd.kernels.errors import UnsupportedError
        from diffmd.md import prepare

        mol = diffmd.load_amber(*_files(self.spec["system"]))
        self.implicit, note = SYSTEMS[self.spec["system"]]["implicit"], None
        kw = dict(dt=DT, temperature=TEMPERATURE, friction=FRICTION, constraints="hbonds", nonbonded="nocutoff",
                  precision="mixed", seed=0)
        try:
            prep = prepare(mol, implicit_solvent=self.implicit, **kw)
        except UnsupportedError as exc:  # OBC2 "when available"
            note, self.implicit = f"{self.implicit} unavailable ({exc}); vacuum", None
            prep = prepare(mol, implicit_solvent=None, **kw)
        # one Maxwell-Boltzmann draw (constrained) as every replica's start; their noise differs
        self.system = mol.with_positions(mol.positions, velocities=np.asarray(prep.carry.state.velocities, np.float64))
        return {"n_atoms": mol.n_atoms, "implicit": self.implicit, "note": note, "backend": jax.default_backend(),
                "device": str(jax.devices()[0].device_kind)}

    def measure(self, replicas: int, steps: int, chunks: int) -> dict:
        """Prepare and simulate ``replicas`` replicas: speed, report cost, temperature, memory."""
        from diffmd import ensemble

        gc.collect()
        reset = _reset_peak_rss()
        rss0 = h.memory_mib()
        dev0 = _device_bytes().get("bytes_in_use")
        start = time.perf_counter()
        ens = ensemble.prepare([self.system], replicas=replicas, temperature=TEMPERATURE, seed=1000 * replicas,
                               integrator="langevin", dt=DT, friction=FRICTION, constraints="hbonds",
                               nonbonded="nocutoff", implicit_solvent=self.implicit, precision="mixed")
        prepare_s = time.perf_counter() - start
        res = ensemble.simulate(ens, steps * (1 + chunks), report_every=steps, progress=False)
        rss1 = h.memory_mib()
        dev1 = _device_bytes().get("peak_bytes_in_use")
        report_s = _report_seconds(res.ensemble)
        timed_s = chunks * steps * DT * 1e-3 * 86400.0 / res.ns_per_day_member
        # the timed window holds one report per chunk, and one more
        stepping_s = None if report_s is None else timed_s - (chunks + 1) * report_s
        out = {"replicas": replicas, "steps_per_chunk": steps, "timed_chunks": chunks, "prepare_s": prepare_s,
               "wall_s": res.wall_seconds, "first_chunk_s": res.wall_seconds - timed_s, "timed_s": timed_s,
               "ns_per_day": res.ns_per_day, "ns_per_day_member": res.ns_per_day_member, "report_s": report_s,
               "stepping_ns_per_day": (replicas * chunks * steps * DT * 1e-3 * 86400.0 / stepping_s
                                       if stepping_s and stepping_s > 0 else None),
               "temperature_k": float(np.mean(res.temperature[-1])), "reallocations": res.reallocations,
               "rss_peak_delta_mib": rss1["peak_mib"] - rss0["rss_mib"] if reset else None}
        if dev0 is not None and dev1 is not None:
            out["device_peak_delta_mib"] = (dev1 - dev0) / 2**20
        del ens, res
        gc.collect()
        return out


class OpenMMSequential:
    """OpenMM CPU: one replica's LangevinMiddle run, with ``Threads=1`` and with every usable core."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self, implicit: str | None) -> dict:
        try:
            import openmm
            from openmm import app
        except ImportError as exc:
            raise h.NotAvailable(f"OpenMM is not installed ({exc})") from exc
        prmtop, crd = _files(self.spec["system"])
        coords = app.AmberInpcrdFile(crd)
        kwargs = {"nonbondedMethod": app.NoCutoff, "constraints": app.HBonds}
        if implicit:
            kwargs["implicitSolvent"] = {"obc2": app.OBC2}[implicit]
        system = app.AmberPrmtopFile(prmtop).createSystem(**kwargs)
        platform = openmm.Platform.getPlatformByName("CPU")
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        self.runs = {}
        for threads in sorted({1, cores}):
            integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, FRICTION, DT)
            context = openmm.Context(system, integrator, platform, {"Threads": str(threads)})
            context.setPositions(coords.positions)
            context.setVelocitiesToTemperature(TEMPERATURE, 1)
            integrator.step(1)
            context.getState(getEnergy=False)
            self.runs[threads] = (context, integrator)
        return {"threads": sorted(self.runs), "n_atoms": system.getNumParticles()}

    def measure(self, seconds: float, slices: int = 3) -> dict:
        """ns/day of one run per thread setting: median of ``slices`` slices, the settings alternating."""
        blocks, rates = {}, {t: [] for t in self.runs}
        for threads, (context, integrator) in self.runs.items():
            start = time.perf_counter()
            integrator.step(1)
            context.getState(getEnergy=False)
            blocks[threads] = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
        for _ in range(slices):
            for threads, (context, integrator) in self.runs.items():
                steps, start = 0, time.perf_counter()
                while steps == 0 or time.perf_counter() - start < seconds / slices:
                    integrator.step(blocks[threads])
                    context.getState(getEnergy=False)  # wait for the steps
                    steps += blocks[threads]
                rates[threads].append(steps * DT * 1e-3 * 86400.0 / (time.perf_counter() - start))
        speeds = {str(t): float(np.median(r)) for t, r in rates.items()}
        best = max(speeds, key=speeds.get)
        return {"ns_per_day": speeds[best], "threads": int(best), "by_threads": speeds}


def run_system(system: str, sizes: list, args, backend: str, log) -> dict:
    out = {"description": SYSTEMS[system]["description"], "sizes": []}
    ours = h.Worker("ensemble", {"name": f"diffmd-{system}", "family": "diffmd", "system": system},
                    timeout=args.timeout)
    theirs = h.Worker("ensemble", {"name": f"openmm-{system}", "family": "openmm", "system": system},
                      timeout=args.timeout)
    try:
        out["diffmd_setup"] = ours.call("setup")
        if out["diffmd_setup"]["note"]:
            out["description"] += f" ({out['diffmd_setup']['note']})"
        try:
            out["openmm_setup"] = theirs.call("setup", implicit=out["diffmd_setup"]["implicit"])
        except (h.NotAvailable, h.WorkerError) as exc:
            out["openmm_setup"] = {"status": "n/a", "reason": str(exc).splitlines()[0]}
            theirs.close()
            theirs = None
        log(f"[{system}] {out['description']}")
        for r in sizes:
            steps = chunk_steps(system, r, backend, args.steps)
            row = ours.call("measure", replicas=r, steps=steps, chunks=args.chunks)
            if theirs is not None:
                row["openmm"] = theirs.call("measure", seconds=args.openmm_seconds)
            out["sizes"].append(row)
            other = row.get("openmm", {}).get("ns_per_day")
            log(f"  R={r}: diffmd {row['ns_per_day']:.4g} ns/day aggregate ({steps} steps/chunk, first chunk "
                f"{row['first_chunk_s']:.1f} s, T {row['temperature_k']:.0f} K); OpenMM CPU "
                + (f"{other:.4g}" if other else "n/a"))
    finally:
        ours.close()
        if theirs is not None:
            theirs.close()
    return out


def _num(x, fmt=".3g") -> str:
    return "" if x is None else format(x, fmt)


def system_table(system: str, rec: dict) -> str:
    rows, prev = [], None
    device = any("device_peak_delta_mib" in s for s in rec["sizes"])
    for s in rec["sizes"]:
        mem = s.get("device_peak_delta_mib") if device else s.get("rss_peak_delta_mib")
        marginal = None
        if prev is not None and mem is not None and prev[1] is not None and s["replicas"] > prev[0]:
            marginal = (mem - prev[1]) / (s["replicas"] - prev[0])
        prev = (s["replicas"], mem)
        omm = s.get("openmm", {})
        ratio = s["ns_per_day"] / omm["ns_per_day"] if omm.get("ns_per_day") else None
        rows.append([s["replicas"], _num(s["ns_per_day"], ".4g"), _num(s["ns_per_day_member"], ".3g"),
                     _num(s.get("stepping_ns_per_day"), ".4g"), _num(s.get("report_s"), ".3f"),
                     _num(omm.get("ns_per_day"), ".4g") + (f" ({omm['threads']} thr)" if omm else ""),
                     _num(ratio, ".2f"), f"{s['steps_per_chunk']} x {s['timed_chunks']}",
                     f"{s['first_chunk_s']:.1f}", f"{s['prepare_s']:.1f}", f"{s['temperature_k']:.0f}",
                     _num(mem, ".0f"), _num(None if mem is None else mem / s["replicas"], ".2f"),
                     _num(marginal, ".2f")])
    kind = "device peak" if device else "peak RSS"
    headers = ["replicas", "diffmd aggregate ns/day", "ns/day per replica", "stepping only ns/day",
               "s per report (all members)",
               "OpenMM CPU, replicas one after another: aggregate ns/day (= one run's ns/day)", "x OpenMM",
               "timed steps (chunk x chunks)", "first chunk s (compile)", "prepare s", "T (K)",
               f"{kind} delta MiB", "MiB per replica", "marginal MiB per added replica"]
    return f"**{system}**: {rec['description']}\n\n" + h.markdown_table(headers, rows)


def plot(record: dict, path: Path, log) -> bool:
    """The scaling curves (aggregate ns/day against replicas, log-log), one panel per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib; it is only needed for this plot)")
        return False
    systems = [s for s, r in record["systems"].items() if r.get("sizes")]
    if not systems:
        return False
    fig, axes = plt.subplots(1, len(systems), figsize=(5.2 * len(systems), 4.2), squeeze=False)
    env = record["environment"]
    for ax, system in zip(axes[0], systems):
        sizes = record["systems"][system]["sizes"]
        r = [s["replicas"] for s in sizes]
        ax.plot(r, [s["ns_per_day"] for s in sizes], "o-", label="diffmd ensemble (simulate, mixed)")
        stepping = [(s["replicas"], s["stepping_ns_per_day"]) for s in sizes if s.get("stepping_ns_per_day")]
        if stepping:
            ax.plot(*zip(*stepping), ".:", color="C0", alpha=0.6, label="diffmd, reports taken out")
        omm = [(s["replicas"], s["openmm"]["ns_per_day"]) for s in sizes if s.get("openmm")]
        if omm:
            ax.plot(*zip(*omm), "s--", color="C3", label="OpenMM CPU, one after another")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(r, [str(x) for x in r])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("replicas in the batch")
        ax.set_ylabel("aggregate ns/day")
        ax.set_title(record["systems"][system]["description"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"diffmd ensemble scaling, {env['devices'][0]} ({env['cpu']}, {env['usable_cores']} cores), "
                 f"{env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sizes(text: str | None, default: list, flag: str) -> list:
    from diffmd import InputError

    if text is None:
        return list(default)
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated replica counts, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise InputError(f"{flag}: replica counts must be >= 1, got {text!r}")
    return sorted(set(sizes))  # ascending: the memory figures rely on it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--ala", default=None, help="alanine dipeptide batch sizes (default 1,4,16,64,256 on a CPU, "
                                               "1,4,16,64,256,1024 on a GPU or with --full; empty string: none)")
    p.add_argument("--t4l", default=None, help="T4 lysozyme batch sizes (default 1,2,4 on a CPU, 1,2,4,8,16,64 on a "
                                               "GPU or with --full; empty string: none)")
    p.add_argument("--full", action="store_true", help="the full sweep on any backend")
    p.add_argument("--steps", type=int, default=None, help="steps per chunk at every size (default: per size)")
    p.add_argument("--chunks", type=int, default=None,
                   help="timed chunks after the compiling one (default 2; 1 with --quick)")
    p.add_argument("--openmm-seconds", type=float, default=None,
                   help="seconds of OpenMM per thread setting and size (default 2; 0.2 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: ala 1,2, no T4L, 10 steps per chunk, 1 timed chunk; no record or plot unless asked")
    p.add_argument("--plot", default=None, help=f"PNG to write (default {PLOT.name} in benchmarks/)")
    p.add_argument("--no-plot", action="store_true", help="no plot")
    h.add_output_arguments(p)
    return p


def main(argv=None) -> int:
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    for flag in ("chunks", "steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    env = h.environment()
    backend = env["jax_backend"]
    defaults = FULL_SIZES if (args.full or backend != "cpu") else CPU_SIZES
    if args.quick:
        defaults = {"ala": [1, 2], "t4l": []}
        args.steps = args.steps or 10
    args.chunks = args.chunks or (1 if args.quick else 2)
    args.openmm_seconds = args.openmm_seconds or (0.2 if args.quick else 2.0)
    sizes = {"ala": _sizes(args.ala, defaults["ala"], "--ala"), "t4l": _sizes(args.t4l, defaults["t4l"], "--t4l")}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    record = {"benchmark": "ensemble", "environment": env, "systems": {}}
    for system, rs in sizes.items():
        if not rs:
            continue
        try:
            record["systems"][system] = run_system(system, rs, args, backend, log)
        except (h.WorkerError, OSError) as exc:
            log(f"[{system}] failed: {exc}")
            record["systems"][system] = {"error": str(exc), "sizes": []}
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    env["source_end"] = h.source_fingerprint()
    settings = (f"LangevinMiddle 300 K, 1/ps, {DT * 1e3:g} fs, H-bond constraints, no cutoff; diffmd mixed precision "
                "via diffmd.ensemble.simulate (aggregate = replicas x one member's simulated time per day, "
                "compiling chunk excluded, one host report per chunk included; 'stepping only' takes the reports "
                "out). OpenMM CPU runs the replicas one after another, so its aggregate ns/day equals one run's "
                "ns/day (best of Threads=1 and all usable cores, measured right after each diffmd size). Memory: "
                + ("JAX device peak bytes after the size minus bytes in use before it."
                   if backend != "cpu" else "peak RSS (VmHWM reset before each size) minus RSS before it.")
                + " Set-up and compilation included, so small sizes show fixed costs.")
    body = "\n\n".join(system_table(s, r) if r.get("sizes") else f"**{s}**: failed: {r['error'].splitlines()[0]}"
                       for s, r in record["systems"].items())
    print("\n".join(h.environment_lines(env)) + "\n\n" + settings + "\n\n" + body)
    if not args.no_plot and (args.plot or not args.quick):
        path = Path(args.plot) if args.plot else PLOT
        if plot(record, path, log):
            body += f"\n\nPlot: `{path.name}`"
            log(f"wrote {path}")
    if not args.no_record and (args.results or not args.quick):
        path = args.results or h.RESULTS
        command = "diffmd bench ensemble " + " ".join(shlex.quote(a) for a in (argv or []))
        h.append_results(path, "Ensemble scaling: aggregate ns/day against replicas" + (" (quick)" if args.quick
                                                                                          else ""),
                         env, settings + "\n\n" + body, command=command.strip())
        log(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=float))
    return 0
