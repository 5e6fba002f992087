"""``diffmd run``: molecular dynamics from the command line.

    diffmd run                                   # the bundled T4 lysozyme L99A + p-xylene demo
    diffmd run system.prmtop system.inpcrd --steps 50000 --nonbonded pme --out run1

Writes ``OUT/state.csv``, ``OUT/trajectory.dcd`` with ``OUT/topology.pdb``,
``OUT/checkpoint/`` (and ``OUT/trajectory.xyz`` with ``--xyz``), and prints a summary
with the speed in ns/day. ``--resume`` continues from ``OUT/checkpoint/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

#: The demo: T4 lysozyme L99A + p-xylene (2,621 atoms) in OBC2 implicit solvent without a cutoff
#: (a 2.0 nm non-periodic cutoff measured no faster here: at this size nearly all pairs are
#: within it, and the table must be rebuilt), H-bond constraints, 2 fs LangevinMiddle at
#: 300 K, minimized first (to OpenMM's default tolerance, about 200 L-BFGS iterations).
#: Measured in CPU seconds on a shared 2-core machine: ~130 s fixed (minimization ~55 s,
#: compilation and set-up ~75 s) plus ~0.17 s per step; DEMO_STEPS = 250 (0.5 ps) keeps the
#: demo at about two minutes on an idle 2-core laptop CPU.
DEMO = {"nonbonded": "nocutoff", "cutoff": None, "implicit_solvent": "obc2", "constraints": "hbonds", "dt": 0.002,
        "integrator": "langevin", "temperature": 300.0, "minimize": True, "report_every": 50}
DEMO_STEPS = 250
DEMO_OUT = "diffmd-demo"


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    run = subparsers.add_parser(
        "run", help="run molecular dynamics (no arguments: the bundled T4 lysozyme demo)",
        description="Run molecular dynamics of an Amber system. With no PRMTOP, runs the bundled T4 lysozyme "
                    "L99A + p-xylene demo (OBC2 implicit solvent, 2 fs Langevin at 300 K, minimized first).")
    run.add_argument("prmtop", nargs="?", help="Amber prmtop/parm7 file (omit for the demo)")
    run.add_argument("coords", nargs="?", help="inpcrd/rst7/crd or NetCDF restart (with velocities if present)")
    run.add_argument("--steps", type=int, default=None,
                     help=f"number of steps (default 10000; the demo {DEMO_STEPS})")
    run.add_argument("--dt", type=float, default=0.002, help="time step in ps (default 0.002)")
    run.add_argument("--integrator", choices=["langevin", "verlet", "nose-hoover"], default="langevin",
                     help="langevin (LangevinMiddle, NVT; default), verlet (NVE) or nose-hoover (NVT)")
    run.add_argument("--temperature", type=float, default=300.0,
                     help="K (default 300); also the temperature of initial velocities when the coordinates "
                          "have none")
    run.add_argument("--friction", type=float, default=1.0,
                     help="Langevin friction / Nose-Hoover collision frequency in 1/ps (default 1)")
    run.add_argument("--constraints", choices=["none", "hbonds", "allbonds"], default="hbonds",
                     help="bond constraints (default hbonds; waters are rigid unless --flexible-water)")
    run.add_argument("--flexible-water", action="store_true", help="do not make waters rigid")
    run.add_argument("--hmr", type=float, default=None, metavar="AMU",
                     help="hydrogen mass repartitioning: hydrogen mass in amu (e.g. 1.5 with --dt 0.004)")
    run.add_argument("--nonbonded", choices=["nocutoff", "cutoff", "pme"], default=None,
                     help="nonbonded method (default nocutoff)")
    run.add_argument("--cutoff", type=float, default=None, help="nonbonded cutoff in nm (default 1.0)")
    run.add_argument("--implicit-solvent", choices=["obc2"], default=None,
                     help="generalized Born implicit solvent (the demo uses obc2)")
    run.add_argument("--precision", choices=["double", "mixed", "single"], default="mixed",
                     help="double, mixed (float32 forces, float64 positions/energies; default) or single")
    run.add_argument("--report-every", type=int, default=None, metavar="N",
                     help="steps between rows of state.csv, trajectory frames and checkpoints (default 500; "
                          "the demo 50)")
    run.add_argument("--seed", type=int, default=0, help="random seed of velocities and Langevin noise")
    run.add_argument("--minimize", action="store_true", help="energy-minimize before the dynamics")
    run.add_argument("--out", default=None, metavar="DIR",
                     help=f"output folder (default diffmd-run; the demo {DEMO_OUT})")
    run.add_argument("--xyz", action="store_true",
                     help="also write DIR/trajectory.xyz (extended XYZ with energies and forces, for ML data)")
    run.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint/ and append to the files")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=run_command)
    return run


def _settings(args) -> dict:
    """The keyword arguments of ``simulate`` from the parsed flags (demo defaults applied)."""
    from .kernels.errors import InputError

    demo = args.prmtop is None
    if args.coords is not None and args.prmtop is None:
        raise InputError("give PRMTOP before COORDS")
    if not demo and args.coords is None:
        raise InputError(f"{args.prmtop}: missing the coordinates file: diffmd run PRMTOP COORDS "
                         "(an inpcrd/rst7/crd or NetCDF restart)")
    if args.steps is not None and args.steps < 0:
        raise InputError(f"--steps must be >= 0, got {args.steps}")
    if args.report_every is None:
        args.report_every = DEMO["report_every"] if demo else 500
    if args.report_every < 1:
        raise InputError(f"--report-every must be >= 1, got {args.report_every}")
    if args.implicit_solvent is not None and args.nonbonded == "pme":
        raise InputError("--implicit-solvent obc2 cannot be combined with --nonbonded pme (implicit solvent "
                         "replaces the explicit water PME is for); use --nonbonded nocutoff or cutoff")
    if args.nonbonded == "nocutoff" and args.cutoff is not None:
        raise InputError("--cutoff has no effect with --nonbonded nocutoff; drop it or choose --nonbonded cutoff")
    kw = dict(integrator=args.integrator, dt=args.dt, temperature=args.temperature, friction=args.friction,
              constraints=args.constraints, rigid_water=not args.flexible_water, hydrogen_mass=args.hmr,
              precision=args.precision, report_every=args.report_every, seed=args.seed, xyz=args.xyz,
              resume=args.resume, progress=False if args.no_progress else None)
    if demo:
        kw.update(nonbonded=args.nonbonded or DEMO["nonbonded"],
                  cutoff=args.cutoff if args.cutoff is not None else (DEMO["cutoff"] or 1.0),
                  implicit_solvent=args.implicit_solvent or DEMO["implicit_solvent"],
                  minimize=True, steps=DEMO_STEPS if args.steps is None else args.steps,
                  out=args.out or DEMO_OUT)
    else:
        kw.update(nonbonded=args.nonbonded or "nocutoff", cutoff=1.0 if args.cutoff is None else args.cutoff,
                  implicit_solvent=args.implicit_solvent, minimize=args.minimize,
                  steps=10000 if args.steps is None else args.steps, out=args.out or "diffmd-run")
    return kw


def run_command(args) -> int:
    """Run ``diffmd run`` for parsed ``args``; returns the exit status.

    Raises:
        DiffmdError: bad input (``diffmd.cli.main`` prints it and exits with 2).
    """
    from .cli import _enable_x64

    kw = _settings(args)
    _enable_x64()
    import diffmd
    from .simulate import simulate

    if args.prmtop is None:
        prmtop, coords = diffmd.data.t4_lysozyme()
        print("diffmd run: no input given, running the demo: T4 lysozyme L99A + p-xylene (2,621 atoms), OBC2 "
              f"implicit solvent, {kw['nonbonded']}, H-bond constraints, {kw['dt'] * 1000:g} fs Langevin "
              f"at {kw['temperature']:g} K, minimized first, {kw['steps']} steps", file=sys.stderr)
    else:
        prmtop, coords = args.prmtop, args.coords
    system = diffmd.load_amber(prmtop, coords)
    steps = kw.pop("steps")
    t0 = time.perf_counter()
    result = simulate(system, steps, **kw)
    wall = time.perf_counter() - t0
    out = os.path.abspath(kw["out"])
    n = len(result.steps)
    last = -1
    print(f"diffmd run: {steps} steps of {kw['dt'] * 1000:g} fs ({steps * kw['dt']:g} ps) on {system.n_atoms} atoms "
          f"in {wall:.1f} s (compilation included)")
    print(f"  speed: {result.ns_per_day:.4g} ns/day (after compilation)")
    print(f"  last report: step {int(result.steps[last])}, potential {result.potential_energy[last]:.2f} kJ/mol, "
          f"temperature {result.temperature[last]:.1f} K; mean temperature over {n} reports "
          f"{result.temperature.mean():.1f} K")
    files = ["state.csv", "trajectory.dcd", "topology.pdb", "checkpoint/"] + (["trajectory.xyz"] if kw["xyz"] else [])
    print(f"  outputs in {out}: {', '.join(files)}")
    return 0
