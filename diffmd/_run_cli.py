"""``diffmd run``: molecular dynamics from the command line.

    diffmd run                                   # the bundled T4 lysozyme L99A + p-xylene demo
    diffmd run system.prmtop system.inpcrd --steps 50000 --nonbonded pme --out run1
    diffmd run system.xml state.xml --steps 50000 --out run1     # an OpenMM System (XmlSerializer)

With an OpenMM System the physics (nonbonded method and cutoff, implicit solvent,
constraints, virtual sites, masses) is the System's: the flags that would change it are
errors (``diffmd._openmm_cli``).

With ``--model DIR`` the potential is a neural model saved by ``diffmd train`` (the prmtop
then supplies topology, masses and constraints); ``--with-amber`` adds the Amber force field
to it (for a model trained as a correction to Amber).

Writes ``OUT/state.csv``, ``OUT/trajectory.dcd`` with ``OUT/topology.pdb``,
``OUT/checkpoint/`` (and ``OUT/trajectory.xyz`` with ``--xyz``), and prints a summary
with the speed in ns/day. ``--steps`` is the run's total: the same command with ``--resume``
added continues from ``OUT/checkpoint/`` up to it, as a requeued job on a preemptible cluster
needs (a finished run says so and exits 0; without a checkpoint yet, the run starts afresh).
A run that fails (NaN energies, a temperature above ``--max-temperature-factor`` times the
target, atoms leaving the system) exits with status 2 and a message naming the step and the
likely cause; its files and checkpoint end at the last good report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ._failures import DEFAULT_MAX_TEMPERATURE_FACTOR

#: The demo: T4 lysozyme L99A + p-xylene (2,621 atoms) in OBC2 implicit solvent with OpenMM's
#: non-periodic 1.0 nm cutoff (reaction field beyond it), H-bond constraints, hydrogen mass
#: repartitioning to 1.5 amu and 4 fs LangevinMiddle at 300 K, after an L-BFGS minimization capped
#: at 100 iterations (enough to relax the raw tleap structure for 4 fs steps). The cutoff makes a
#: step about 3.5x cheaper than without one, and single precision (robust SHAKE) ~1.4x cheaper
#: than mixed. The demo's temperature dips to ~220 K after the minimization (the minimized
#: structure soaks up kinetic energy) and is back near 290 K by 2 ps.
#: Measured (``diffmd run``, whole process, 500 steps = 2 ps, on the shared 2-core machine at load
#: average 9-11): 92 CPU-seconds (89.9 user + 2.6 system; the old 2 fs / no-cutoff / 250-step demo
#: took ~170), of which about 50 are XLA compilation (the minimizer's and the dynamics' compiled
#: functions ~13 each, ~400 small eager-op compilations during set-up ~16); ~0.16 s per step at
#: that load. Idle, that is about 70-85 s of wall time (the steps use both cores, compilation one).
DEMO = {"nonbonded": "cutoff", "cutoff": 1.0, "implicit_solvent": "obc2", "constraints": "hbonds", "dt": 0.004,
        "hydrogen_mass": 1.5, "precision": "single", "integrator": "langevin", "temperature": 300.0,
        "minimize": True, "minimize_max_iterations": 100, "report_every": 50}
DEMO_STEPS = 500
#: ``--implicit-solvent`` choices (``diffmd energy`` and ``diffmd run``): the generalized-Born models
#: ``System.energy_fn`` offers, OpenMM's OBC2 (Amber igb=5), OBC1 (igb=2) and HCT (igb=1)
IMPLICIT_SOLVENTS = ("obc2", "obc1", "hct")
#: defaults of ``--dt`` [ps] and ``--precision`` outside the demo
DEFAULT_DT = 0.002
DEFAULT_PRECISION = "mixed"
DEMO_OUT = "diffmd-demo"


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    run = subparsers.add_parser(
        "run", help="run molecular dynamics (no arguments: the bundled T4 lysozyme demo)",
        description="Run molecular dynamics of an Amber system. With no PRMTOP, runs the bundled T4 lysozyme "
                    "L99A + p-xylene demo (OBC2 implicit solvent with a 1.0 nm cutoff, hydrogen mass 1.5 amu, 4 fs "
                    f"Langevin at 300 K for {DEMO_STEPS} steps, briefly minimized first).")
    run.add_argument("prmtop", nargs="?", help="Amber prmtop/parm7 file, or an OpenMM System XML from XmlSerializer "
                     "(omit for the demo)")
    run.add_argument("coords", nargs="?", help="inpcrd/rst7/crd or NetCDF restart (with velocities if present) or PDB "
                     "(kind judged by content); with a System XML a PDB or a State XML (positions, box, velocities)")
    run.add_argument("--steps", type=int, default=None,
                     help=f"number of steps (default 10000; the demo {DEMO_STEPS})")
    run.add_argument("--dt", type=float, default=None,
                     help="time step in ps (default 0.002; the demo 0.004 with --hmr 1.5 unless --dt or --hmr given)")
    run.add_argument("--integrator", choices=["langevin", "verlet", "nose-hoover"], default="langevin",
                     help="langevin (LangevinMiddle, NVT; default), verlet (NVE) or nose-hoover (NVT)")
    run.add_argument("--temperature", type=float, default=300.0,
                     help="K (default 300); also the temperature of initial velocities when the coordinates "
                          "have none")
    run.add_argument("--friction", type=float, default=1.0,
                     help="Langevin friction / Nose-Hoover collision frequency in 1/ps (default 1)")
    run.add_argument("--constraints", choices=["none", "hbonds", "allbonds"], default=None,
                     help="bond constraints (default hbonds; waters are rigid unless --flexible-water)")
    run.add_argument("--flexible-water", action="store_true", help="do not make waters rigid")
    run.add_argument("--hmr", type=float, default=None, metavar="AMU",
                     help="hydrogen mass repartitioning: hydrogen mass in amu (e.g. 1.5 with --dt 0.004)")
    run.add_argument("--nonbonded", choices=["nocutoff", "cutoff", "pme"], default=None,
                     help="nonbonded method (default nocutoff)")
    run.add_argument("--cutoff", type=float, default=None, help="nonbonded cutoff in nm (default 1.0)")
    run.add_argument("--implicit-solvent", choices=IMPLICIT_SOLVENTS, default=None,
                     help="generalized Born implicit solvent: obc2 (Amber igb=5), obc1 (igb=2) or hct (igb=1), as "
                          "OpenMM's OBC2/OBC1/HCT (the demo uses obc2)")
    run.add_argument("--pressure", type=float, default=None, metavar="BAR",
                     help="constant pressure (NPT) in bar with a Monte Carlo barostat; needs a periodic system, "
                          "--nonbonded cutoff or pme, and langevin or nose-hoover (default: constant volume)")
    run.add_argument("--barostat-frequency", type=int, default=None, metavar="N",
                     help="steps between barostat volume moves (default 25; with --pressure)")
    run.add_argument("--precision", choices=["double", "mixed", "single"], default=None,
                     help="double, mixed (float32 forces, float64 positions/energies; default) or single (the demo's)")
    run.add_argument("--report-every", type=int, default=None, metavar="N",
                     help="steps between rows of state.csv, trajectory frames and checkpoints (default 500; "
                          "the demo 50)")
    run.add_argument("--seed", type=int, default=0, help="random seed of velocities and Langevin noise")
    run.add_argument("--minimize", action="store_true", help="energy-minimize before the dynamics")
    run.add_argument("--out", default=None, metavar="DIR",
                     help=f"output folder (default diffmd-run; the demo {DEMO_OUT})")
    run.add_argument("--xyz", action="store_true",
                     help="also write DIR/trajectory.xyz (extended XYZ with energies and forces, for ML data)")
    run.add_argument("--resume", action="store_true",
                     help="continue from DIR/checkpoint/ up to --steps (the run's total) and append to the files; "
                          "a finished run exits 0, and without a checkpoint yet the run starts afresh")
    run.add_argument("--max-temperature-factor", type=float, default=DEFAULT_MAX_TEMPERATURE_FACTOR, metavar="F",
                     help="stop with an error at a step whose temperature exceeds F times the target (--temperature; "
                          f"with verlet, the starting temperature if higher); default {DEFAULT_MAX_TEMPERATURE_FACTOR:g}, "
                          "0 turns the check off")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--model", default=None, metavar="DIR",
                     help="run with the neural potential that 'diffmd train' saved in DIR (model.json, "
                          "params.msgpack) instead of the Amber force field; PRMTOP supplies topology, masses, "
                          "constraints and the box (if any)")
    run.add_argument("--with-amber", action="store_true",
                     help="with --model: add the Amber force field (as --nonbonded/--cutoff/--implicit-solvent set "
                          "it) to the model, for models trained on what Amber leaves out")
    run.add_argument("--ligand", default=None, metavar="RESNAME",
                     help="residue name of a bound ligand: writes DIR/analysis.csv (ligand RMSD, contacts, hydrogen "
                          "bonds, interaction energy, bound flag per frame) and DIR/pocket_rmsf.csv after the run; "
                          "default: the ligand of a 'diffmd prepare' folder (its prepare.json)")
    from ._ensemble_cli import add_ensemble_arguments

    add_ensemble_arguments(run)  # --replicas R, --batch LIST.txt
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
                         "(an inpcrd/rst7/crd, NetCDF restart or PDB)")
    if args.steps is not None and args.steps < 0:
        raise InputError(f"--steps must be >= 0, got {args.steps}")
    if args.report_every is None:
        args.report_every = DEMO["report_every"] if demo else 500
    if args.report_every < 1:
        raise InputError(f"--report-every must be >= 1, got {args.report_every}")
    if args.implicit_solvent is not None and args.nonbonded == "pme":
        raise InputError(f"--implicit-solvent {args.implicit_solvent} cannot be combined with --nonbonded pme "
                         "(implicit solvent replaces the explicit water PME is for); use --nonbonded nocutoff or "
                         "cutoff")
    if args.nonbonded == "nocutoff" and args.cutoff is not None:
        raise InputError("--cutoff has no effect with --nonbonded nocutoff; drop it or choose --nonbonded cutoff")
    if args.model is not None:
        if demo:
            raise InputError("--model needs the PRMTOP COORDS of the system the model was trained for")
        if not os.path.isfile(os.path.join(args.model, "model.json")):
            raise InputError(f"--model {args.model}: no model.json there; give the folder 'diffmd train' wrote "
                             "(its [output] folder)")
        amber_flags = [f for f, v in (("--nonbonded", args.nonbonded), ("--cutoff", args.cutoff),
                                      ("--implicit-solvent", args.implicit_solvent)) if v is not None]
        if amber_flags and not args.with_amber:
            raise InputError(f"{', '.join(amber_flags)} set(s) the Amber force field, which --model replaces; add "
                             "--with-amber to sum the two, or drop the flag(s)")
    elif args.with_amber:
        raise InputError("--with-amber only applies with --model DIR")
    if args.barostat_frequency is not None and args.pressure is None:
        raise InputError("--barostat-frequency has no effect without --pressure; add --pressure BAR or drop it")
    kw = dict(integrator=args.integrator, dt=DEFAULT_DT if args.dt is None else args.dt,
              temperature=args.temperature, friction=args.friction, constraints=args.constraints or "hbonds",
              rigid_water=not args.flexible_water, hydrogen_mass=args.hmr,
              precision=args.precision or DEFAULT_PRECISION, report_every=args.report_every, seed=args.seed,
              xyz=args.xyz, resume=args.resume, progress=False if args.no_progress else None, pressure=args.pressure,
              barostat_frequency=25 if args.barostat_frequency is None else args.barostat_frequency)
    if demo:
        if args.dt is None and args.hmr is None:
            kw.update(dt=DEMO["dt"], hydrogen_mass=DEMO["hydrogen_mass"])
        if args.precision is None:
            kw.update(precision=DEMO["precision"])
        kw.update(nonbonded=args.nonbonded or DEMO["nonbonded"],
                  cutoff=args.cutoff if args.cutoff is not None else (DEMO["cutoff"] or 1.0),
                  implicit_solvent=args.implicit_solvent or DEMO["implicit_solvent"],
                  minimize=True, minimize_max_iterations=DEMO["minimize_max_iterations"],
                  steps=DEMO_STEPS if args.steps is None else args.steps, out=args.out or DEMO_OUT)
    else:
        kw.update(nonbonded=args.nonbonded or "nocutoff", cutoff=1.0 if args.cutoff is None else args.cutoff,
                  implicit_solvent=args.implicit_solvent, minimize=args.minimize,
                  steps=10000 if args.steps is None else args.steps, out=args.out or "diffmd-run")
    return kw


def use_model(args, system, kw: dict) -> dict:
    """``kw`` (``simulate``/``ensemble.prepare`` keywords) with ``potential=`` from ``--model``
    (plus Amber with ``--with-amber``), the Amber-only settings removed; ``kw`` as is without it."""
    if getattr(args, "model", None) is None:
        return kw
    from .potentials.neural import sum_potentials
    from .train import load_model

    kw = dict(kw)
    amber = dict(nonbonded=kw.pop("nonbonded"), cutoff=kw.pop("cutoff"), implicit_solvent=kw.pop("implicit_solvent"))
    potential = load_model(args.model, system.topology.elements)
    if args.with_amber:
        potential = sum_potentials(system.energy_fn(**amber, precision=kw["precision"]), potential)
    kw["potential"] = potential
    return kw


def run_command(args) -> int:
    """Run ``diffmd run`` for parsed ``args``; returns the exit status.

    Raises:
        DiffmdError: bad input (``diffmd.cli.main`` prints it and exits with 2).
    """
    from ._openmm_cli import is_openmm_system, load_input, openmm_run_settings
    from .cli import _enable_x64

    openmm_input = is_openmm_system(args.prmtop)
    if openmm_input:
        openmm_run_settings(args, {})  # flag errors before anything runs
    if args.replicas != 1 or args.batch:  # the ensemble path also refuses --replicas 0
        from ._ensemble_cli import run_ensemble_from_args

        return run_ensemble_from_args(args)
    kw = _settings(args)
    if openmm_input:
        kw = openmm_run_settings(args, kw)
    factor = getattr(args, "max_temperature_factor", DEFAULT_MAX_TEMPERATURE_FACTOR)
    kw["max_temperature_factor"] = None if factor == 0 else factor
    if kw["resume"] and _finished(kw["out"], kw["steps"]):
        return 0
    _enable_x64()
    import diffmd
    from .simulate import simulate

    if args.prmtop is None:
        prmtop, coords = diffmd.data.t4_lysozyme()
        cut = "no cutoff" if kw["nonbonded"] == "nocutoff" else f"{kw['cutoff']:g} nm cutoff"
        hmr = f", hydrogen mass {kw['hydrogen_mass']:g} amu" if kw["hydrogen_mass"] else ""
        print("diffmd run: no input given, running the demo: T4 lysozyme L99A + p-xylene (2,621 atoms), OBC2 "
              f"implicit solvent, {cut}, H-bond constraints{hmr}, {kw['precision']} precision, "
              f"{kw['dt'] * 1000:g} fs Langevin at {kw['temperature']:g} K, minimized first "
              f"({kw['minimize_max_iterations']} L-BFGS iterations at most), {kw['steps']} steps "
              f"({kw['steps'] * kw['dt']:g} ps)", file=sys.stderr)
    else:
        prmtop, coords = args.prmtop, args.coords
    system = load_input(prmtop, coords)
    from .workflows import ligand_for_run

    ligand = ligand_for_run(args.prmtop, getattr(args, "ligand", None), system)
    gb_model = kw.get("implicit_solvent")
    kw = use_model(args, system, kw)
    steps = kw.pop("steps")
    t0 = time.perf_counter()
    result = simulate(system, steps, **kw)
    wall = time.perf_counter() - t0
    print_summary(result, steps, kw["dt"], system.n_atoms, wall)
    files = ["state.csv", "trajectory.dcd", "topology.pdb", "checkpoint/"] + (["trajectory.xyz"] if kw["xyz"] else [])
    if ligand is not None:
        from .workflows import analyse_run

        analyse_run(kw["out"], system, ligand, implicit_solvent=gb_model)
        files += ["analysis.csv", "pocket_rmsf.csv", "analysis.json"]
    print(f"  outputs in {os.path.abspath(kw['out'])}: {', '.join(files)}")
    return 0


def _finished(out: str, steps: int) -> bool:
    """Whether ``out`` holds a checkpoint at or past ``steps`` (then say so); notes a fresh start."""
    from .checkpoint import find_checkpoint, read_checkpoint_metadata

    if find_checkpoint(out) is None:
        print(f"diffmd run: no checkpoint in {os.path.abspath(out)} yet: --resume starts the run from step 0",
              file=sys.stderr)
        return False
    done = int(read_checkpoint_metadata(out).get("step", -1))
    if done < steps:
        return False
    print(f"diffmd run: the run in {os.path.abspath(out)} is already finished: its checkpoint is at step {done} "
          f"(--steps {steps} is the run's total); nothing to do")
    return True


def print_summary(result, steps: int, dt: float, n_atoms: int, wall: float) -> None:
    """Print what a run did: steps, speed (when measurable), final state and mean temperature."""
    from ._runner import EQUILIBRATION_FRACTION, after_equilibration, speed_note

    first = int(result.steps[0])
    span = f"steps {first}-{steps}" if first else f"{steps} steps"
    print(f"diffmd run: {span} of {dt * 1000:g} fs ({(steps - first) * dt:g} ps) on {n_atoms} atoms in {wall:.1f} s "
          "(compilation included)")
    note = speed_note(result.timed_steps, result.timed_seconds)
    print(f"  {note}" if note else f"  speed: {result.ns_per_day:.4g} ns/day (after compilation: "
          f"{result.timed_steps} steps in {result.timed_seconds:.1f} s)")
    print(f"  final state: step {int(result.steps[-1])}, potential {result.potential_energy[-1]:.2f} kJ/mol, "
          f"temperature {result.temperature[-1]:.1f} K")
    window = after_equilibration(result.steps, steps)
    lo, hi = int(result.steps[window][0]), int(result.steps[window][-1])
    left_out = f" (the first {EQUILIBRATION_FRACTION:.0%} of the run left out as equilibration)" if lo > 0 else ""
    print(f"  mean temperature {result.temperature[window].mean():.1f} K over steps {lo}-{hi}, "
          f"{int(window.sum())} samples{left_out}")
