"""Benchmark ``grad-memory``: time and peak memory of a gradient through N MD steps.

    diffmd bench grad-memory PRMTOP COORDS --steps 4096 [--precision mixed] [--cutoff 1.0]
                             [--segment L] [--forward] [--minimize-iterations 200]

Differentiates the mean potential energy over an ``--steps``-step trajectory
(LangevinMiddle 300 K, friction 1/ps, 2 fs, H-bond constraints, reaction-field cutoff
``--cutoff`` nm; periodic if the coordinates have a box) with respect to every
force-field parameter (``AmberParams``: charges, LJ, bonds, angles, torsions, ...)
using ``diffmd.trajectory_grad`` (segments of ``--segment`` steps, default about
sqrt(N), each recomputed in the backward pass, and each step inside a segment too unless
``--segments-only``). The measurement runs in a fresh
subprocess, so its peak resident memory (``VmHWM``) is that of this one gradient
(plus the interpreter, JAX and compilation); ``compiled_temp_bytes`` is XLA's own
count of the gradient program's temporary buffers, and on a GPU ``device_peak_bytes``
the device's peak. ``seconds`` is one execution of the compiled gradient
(``compile_seconds`` apart). With ``--forward`` the same trajectory also runs forward
only (no gradient), and ``gradient_cost_multiple`` is the gradient's time over it.
``--compile-only`` stops after compiling (``compiled_temp_bytes`` without a run), to size
long trajectories cheaply.

Prints one JSON object: ``steps``, ``seconds``, ``peak_memory_bytes``,
``gradient_norm``, ``segment_length``, ``device`` and the rest named above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench grad-memory", description=__doc__.split("\n\n")[0])
    p.add_argument("prmtop", help="Amber topology (.prmtop)")
    p.add_argument("coords", help="coordinates (.inpcrd/.crd/.rst7)")
    p.add_argument("--steps", type=int, required=True, help="MD steps to differentiate through")
    p.add_argument("--precision", default="mixed", choices=("double", "mixed", "single"))
    p.add_argument("--cutoff", type=float, default=1.0, help="nonbonded (reaction-field) cutoff [nm]")
    p.add_argument("--segment", type=int, default=None, help="steps per checkpointed segment (default ~sqrt(steps))")
    p.add_argument("--segments-only", action="store_true",
                   help="checkpoint segments but not each step inside them (stores a segment's intermediates)")
    p.add_argument("--forward", action="store_true", help="also time the forward trajectory alone")
    p.add_argument("--minimize-iterations", type=int, default=200,
                   help="L-BFGS iterations before the dynamics (raw tleap coordinates need some; 0: none)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile the gradient and report XLA's memory analysis without running it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    return p


def _peak_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure(args) -> dict:
    """Run the gradient (and optionally the forward trajectory) here; return the record."""
    import jax

    jax.config.update("jax_enable_x64", args.precision != "single")
    import jax.numpy as jnp

    import diffmd
    from diffmd.md import reallocate
    from diffmd.md import prepare
    from diffmd.learn.trajectory_grad import default_segment_length, make_trajectory_fn

    if args.steps < 1:
        raise diffmd.InputError(f"--steps must be >= 1, got {args.steps}")
    system = diffmd.load_amber(args.prmtop, args.coords)
    prep = prepare(system, integrator="langevin", dt=0.002, constraints="hbonds", nonbonded="cutoff",
                   cutoff=args.cutoff, precision=args.precision, seed=args.seed,
                   minimize=args.minimize_iterations > 0, minimize_max_iterations=args.minimize_iterations)
    segment = args.segment or default_segment_length(args.steps)
    traj = make_trajectory_fn(prep.integrator, prep.energy_fn, args.steps, segment_length=segment,
                              checkpoint_steps=not args.segments_only)

    def loss(params, carry):
        carry, obs = traj(carry, params, prep.box, prep.constraints)
        return jnp.mean(obs["potential_energy"]), carry

    carry = prep.carry
    record = {"steps": args.steps, "segment_length": segment, "checkpoint_steps": not args.segments_only,
              "n_atoms": system.n_atoms,
              "precision": args.precision, "device": str(jax.devices()[0].device_kind), "reallocations": 0}
    for attempt in range(4):  # a neighbor table that overflows mid-trajectory is enlarged and the run redone
        t0 = time.perf_counter()
        grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(prep.params, carry).compile()
        record["compile_seconds"] = time.perf_counter() - t0
        analysis = grad_fn.memory_analysis()
        if args.compile_only:
            record["compiled_temp_bytes"] = None if analysis is None else int(analysis.temp_size_in_bytes)
            record["host_peak_bytes"] = _peak_bytes()
            return record
        t0 = time.perf_counter()
        (value, end), grads = jax.block_until_ready(grad_fn(prep.params, carry))
        record["seconds"] = time.perf_counter() - t0
        nb = end.neighbors
        if nb is None or not bool(nb.overflow):
            break
        carry = carry.__class__(carry.state, reallocate(nb, carry.state.positions, prep.box, attempt),
                                carry.barostat, carry.barostat_key)
        record["reallocations"] += 1
    leaves = jax.tree_util.tree_leaves(grads)
    record["loss"] = float(value)
    record["gradient_norm"] = float(jnp.sqrt(sum(jnp.sum(jnp.asarray(g, jnp.float64) ** 2) for g in leaves)))
    record["gradient_finite"] = bool(all(bool(jnp.all(jnp.isfinite(g))) for g in leaves))
    record["compiled_temp_bytes"] = None if analysis is None else int(analysis.temp_size_in_bytes)
    if args.forward:
        fwd = jax.jit(lambda p, c: loss(p, c)[0]).lower(prep.params, carry).compile()
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(prep.params, carry))
        record["forward_seconds"] = time.perf_counter() - t0
        record["gradient_cost_multiple"] = record["seconds"] / record["forward_seconds"]
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        record["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    record["peak_memory_bytes"] = record.get("device_peak_bytes", _peak_bytes())
    record["host_peak_bytes"] = _peak_bytes()
    return record


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.in_process:
        print(json.dumps(measure(args)))
        return 0
    # a fresh process per measurement: its high-water mark is this gradient's alone
    argv = list(sys.argv[1:] if argv is None else argv)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.grad_memory import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run([sys.executable, "-c", code, *argv, "--in-process"], stdout=subprocess.PIPE, env=env,
                          text=True)
    if proc.returncode:
        return proc.returncode
    print(proc.stdout.strip().splitlines()[-1])
    return 0
