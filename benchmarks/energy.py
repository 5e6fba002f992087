"""Benchmark ``energy``: jit-compiled energy+forces evaluations, diffmd vs OpenMM vs jax-md.

    diffmd bench energy [--systems t4l,t4l-cutoff,t4l-obc2,dhfr,dhfr-pme] [--repeats N] [--quick]

Every engine runs in its own subprocess (see ``_harness``); their timed slices
are interleaved round by round, and speeds are medians over rounds of
per-round ratios. Before any timing, each engine's energy and forces are
compared with OpenMM's Reference platform (double precision) on the same
settings, so a speed is never reported for wrong numbers.

Engines: ``diffmd-{single,mixed,double}``, ``openmm-cpu`` (all cores),
``openmm-cuda`` (only when JAX runs on a GPU), ``jaxmd-{single,double}``
(``jax_md.mm_forcefields``, loaded through its OpenMM converter).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import _harness as h
from ._engines import make_engine  # noqa: F401  (the workers build engines through this module)
from ._systems import SYSTEMS, resolve_files

DEFAULT_SYSTEMS = ("t4l", "t4l-cutoff", "t4l-obc2", "dhfr", "dhfr-pme")
CPU_ENGINES = ("diffmd-single", "diffmd-mixed", "diffmd-double", "openmm-cpu", "jaxmd-single", "jaxmd-double")
# A wrong term or setting moves the energy by far more than these; rounding in
# float32 (OpenMM's own CPU platform included) stays well inside them.
TOLERANCE = {"double": {"energy": 1e-7, "force": 1e-6}, "mixed": {"energy": 2e-5, "force": 2e-3},
             "single": {"energy": 2e-5, "force": 2e-3}}


def engine_spec(name: str, system: str, files: tuple) -> dict:
    family, _, variant = name.partition("-")
    cfg = SYSTEMS[system]
    spec = {"name": name, "family": family, "system": system, "prmtop": files[0], "coords": files[1],
            "nonbonded": cfg["nonbonded"], "cutoff": cfg["cutoff"], "implicit": cfg.get("implicit")}
    if family == "openmm":
        spec["platform"] = {"cpu": "CPU", "cuda": "CUDA", "reference": "Reference"}[variant]
        spec["precision"] = "double" if variant == "reference" else "mixed"
    else:
        spec["precision"] = variant
    return spec


def default_engines() -> list:
    import jax

    engines = list(CPU_ENGINES)
    if jax.default_backend() == "gpu":
        engines.insert(engines.index("openmm-cpu") + 1, "openmm-cuda")
    return engines


def _accuracy(result: dict, forces: np.ndarray, ref: dict, ref_forces: np.ndarray, precision: str) -> dict:
    d_energy = result["energy"] - ref["energy"]
    err = np.sqrt(np.mean(np.sum((forces - ref_forces) ** 2, axis=1)))
    rms = np.sqrt(np.mean(np.sum(ref_forces**2, axis=1)))
    tol = TOLERANCE[precision]
    rel_e = abs(d_energy) / max(abs(ref["energy"]), 1.0)
    ok = bool(np.all(np.isfinite(forces)) and rel_e <= tol["energy"] and err / rms <= tol["force"])
    return {"energy": result["energy"], "energy_error": d_energy, "energy_rel_error": rel_e,
            "force_rms_error": float(err), "force_rel_error": float(err / rms),
            "force_max_error": float(np.max(np.abs(forces - ref_forces))), "tolerance": tol, "ok": ok}


def run_system(system: str, engines: list, args, log) -> dict:
    """Set up, check and time every engine on one system; returns the system's record."""
    cfg = SYSTEMS[system]
    files = resolve_files(system, args.cache_dir)
    out = {"description": cfg["description"], "files": list(files), "source": h.source_fingerprint(), "engines": {}}
    tmp = tempfile.mkdtemp(prefix="diffmd-bench-")
    ref = h.Worker("energy", engine_spec("openmm-reference", system, files), timeout=args.timeout)
    workers = {name: h.Worker("energy", engine_spec(name, system, files), timeout=args.timeout) for name in engines}
    try:
        log(f"[{system}] {cfg['description']}")
        # all imports finish before anything is timed (they would slow the set-ups)
        for worker in (ref, *workers.values()):
            worker.wait_ready()
        ref_info = ref.call("setup")
        ref_result = ref.call("check", path=os.path.join(tmp, "reference.npy"))
        ref_forces = np.load(os.path.join(tmp, "reference.npy"))
        ref.close()
        out.update(n_atoms=ref_info["n_atoms"], reference_energy=ref_result["energy"])
        log(f"  OpenMM Reference energy {ref_result['energy']:.4f} kJ/mol ({ref_info['n_atoms']} atoms)")
        live = {}
        for name, worker in workers.items():
            rec = out["engines"][name] = {"precision": worker.spec["precision"]}
            try:
                rec["setup"] = worker.call("setup")
                path = os.path.join(tmp, f"{name}.npy")
                result = worker.call("check", path=path)
                rec["accuracy"] = _accuracy(result, np.load(path), ref_result, ref_forces, rec["precision"])
                rec["status"] = "ok" if rec["accuracy"]["ok"] else "wrong"
                live[name] = worker
                log(f"  {name}: set up; energy error {rec['accuracy']['energy_error']:+.3e} kJ/mol, "
                    f"force error {rec['accuracy']['force_rel_error']:.1e} (relative RMS) -> {rec['status']}")
            except h.NotAvailable as exc:
                rec.update(status="n/a", reason=str(exc))
                worker.close()
                log(f"  {name}: n/a ({exc})")
            except h.WorkerError as exc:  # a crash of one engine must not lose the others' numbers
                rec.update(status="error", reason=str(exc).splitlines()[0])
                worker.close()
                log(f"  {name}: failed: {exc}")
        if live:
            log(f"  timing {len(live)} engines: {args.repeats} interleaved rounds of ~{args.round_seconds} s each")
            timing = h.interleaved(live, args.repeats, args.round_seconds)
            for name, worker in live.items():
                rec = out["engines"][name]
                rec["timing"] = timing[name]
                rec["seconds_median"] = statistics.median(timing[name]["seconds"])
                rec["memory"] = worker.memory()
                rec["memory_at_import"] = worker.import_memory
                if cfg["nonbonded"] != "nocutoff":
                    try:
                        rec["rebuild"] = worker.call("rebuild", repeats=args.rebuild_repeats)
                    except h.NotAvailable as exc:
                        rec["rebuild"] = {"n/a": str(exc)}
                    rec["memory_after_rebuild"] = worker.memory()
            base = baseline(out["engines"])
            out["baseline"] = base
            for name, rec in out["engines"].items():
                if "timing" not in rec:
                    continue
                if base:
                    rec["x_openmm"] = h.paired_ratio(timing[base]["seconds"], timing[name]["seconds"])
                peer = jaxmd_peer(name, out["engines"])
                if peer:
                    rec["x_jaxmd"] = h.paired_ratio(timing[peer]["seconds"], timing[name]["seconds"])
    finally:
        ref.close()
        for worker in workers.values():
            worker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def baseline(engines: dict) -> str | None:
    """The OpenMM engine speeds are compared with: CUDA where it ran correctly, else CPU."""
    for name in ("openmm-cuda", "openmm-cpu"):
        if engines.get(name, {}).get("status") == "ok":
            return name
    return None


def jaxmd_peer(name: str, engines: dict) -> str | None:
    """The jax-md engine a diffmd engine is compared with (double with double, else single)."""
    if not name.startswith("diffmd-"):
        return None
    peer = "jaxmd-double" if name == "diffmd-double" else "jaxmd-single"
    return peer if engines.get(peer, {}).get("status") == "ok" else None


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def _memory_cell(memory: dict) -> str:
    cell = _fmt(memory.get("peak_mib"), ".0f")
    if memory.get("device_peak_mib") is not None:
        cell += f" (device {memory['device_peak_mib']:.0f})"
    return cell


def system_table(system: str, rec: dict) -> str:
    """The Markdown table of one system's record."""
    headers = ["engine", "ms / eval (median)", "x OpenMM", "x jax-md", "compile or context s", "neighbor build s",
               "rebuild under jit ms", "peak MiB", "energy error kJ/mol", "force error (rel. RMS)", "check"]
    rows = []
    for name, e in rec["engines"].items():
        if e["status"] in ("n/a", "error"):
            reason = e["reason"].replace("|", "/").replace("\n", " ")
            rows.append([name] + [""] * (len(headers) - 2) + [f"{e['status']}: {reason[:160]}"])
            continue
        setup, acc = e["setup"], e["accuracy"]
        rebuild = e.get("rebuild", {})
        speed = e.get("seconds_median")
        rows.append([
            name,
            _fmt(None if speed is None else speed * 1e3, ".2f"),
            _fmt(e.get("x_openmm"), ".2f") if e["status"] == "ok" else "(wrong)",
            _fmt(e.get("x_jaxmd"), ".1f") if e["status"] == "ok" else "",
            _fmt(setup.get("compile_s", setup.get("context_s")), ".1f"),
            _fmt(setup.get("neighbor_build_s"), ".2f"),
            _fmt(None if "seconds_median" not in rebuild else rebuild["seconds_median"] * 1e3, ".0f"),
            _memory_cell(e.get("memory", {})),
            f"{acc['energy_error']:+.2e}",
            f"{acc['force_rel_error']:.1e}",
            e["status"],
        ])
    title = (f"**{system}**: {rec['description']}; {rec['n_atoms']} atoms; OpenMM Reference energy "
             f"{rec['reference_energy']:.3f} kJ/mol; x OpenMM is relative to {rec.get('baseline') or 'no OpenMM run'}")
    return title + "\n\n" + h.markdown_table(headers, rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench energy", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, from {', '.join(SYSTEMS)} (default {','.join(DEFAULT_SYSTEMS)})")
    p.add_argument("--engines", default=None,
                   help=f"comma-separated (default {','.join(CPU_ENGINES)}, plus openmm-cuda on a GPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 7; 2 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="seconds of work per engine and round (default 1.0; 0.05 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="few, short rounds (smoke test); not recorded in RESULTS.md unless --results is given")
    h.add_output_arguments(p)
    p.add_argument("--cache-dir", default=None, help="where downloaded systems go (default ~/.cache/diffmd/benchmarks)")
    return p


def main(argv=None) -> int:
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            raise InputError(f"unknown system {s!r}: choose from {', '.join(SYSTEMS)}")
    engines = [e for e in (args.engines.split(",") if args.engines else default_engines()) if e]
    known = set(CPU_ENGINES) | {"openmm-cuda"}
    for e in engines:
        if e not in known:
            raise InputError(f"unknown engine {e!r}: choose from {', '.join(sorted(known))}")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.round_seconds is None:
        args.round_seconds = 0.05 if args.quick else 1.0
    args.rebuild_repeats = 2 if args.quick else 5

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    env = h.environment()
    record = {"benchmark": "energy", "environment": env, "settings": {
        "systems": systems, "engines": engines, "repeats": args.repeats, "round_seconds": args.round_seconds,
        "quick": args.quick}, "systems": {}}
    log(f"diffmd bench energy on {env['cpu']} ({env['usable_cores']} cores), JAX devices {env['devices']}, "
        f"load average {env['load_average']}")
    for system in systems:
        try:
            record["systems"][system] = run_system(system, engines, args, log)
        except (h.WorkerError, OSError) as exc:  # keep the other systems' numbers
            log(f"[{system}] failed: {exc}")
            record["systems"][system] = {"error": str(exc)}
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    env["source_end"] = h.source_fingerprint()

    body = "\n\n".join(system_table(s, rec) if "error" not in rec else f"**{s}**: failed: {rec['error'].splitlines()[0]}"
                       for s, rec in record["systems"].items())
    settings = (f"{args.repeats} interleaved rounds of ~{args.round_seconds} s per engine; ms / eval is the median "
                "over rounds; x OpenMM and x jax-md are medians of per-round time ratios (higher is faster).")
    print("\n".join(h.environment_lines(env)) + "\n\n" + settings + "\n\n" + body)
    command = "diffmd bench energy " + " ".join(shlex.quote(a) for a in (argv or []))
    if not args.no_record and (args.results or not args.quick):
        path = args.results or h.RESULTS
        h.append_results(path, "energy+forces" + (" (quick)" if args.quick else ""), env,
                         settings + "\n\n" + body, command=command.strip())
        log(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=float))
    return 0
