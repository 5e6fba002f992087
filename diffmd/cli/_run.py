"""``diffmd run``: molecular dynamics from the command line.

    diffmd run                                   # the bundled T4 lysozyme L99A + p-xylene demo
    diffmd run system.prmtop system.inpcrd --steps 50000 --nonbonded pme --out run1
    diffmd run system.xml state.xml --steps 50000 --out run1     # an OpenMM System (XmlSerializer)

With an OpenMM System the physics (nonbonded method and cutoff, implicit solvent,
constraints, virtual sites, masses) is the System's: the flags that would change it are
errors (``diffmd cli``'s OpenMM input rules).

With ``--model DIR`` the potential is a neural model saved by ``diffmd train`` (the prmtop
then supplies topology, masses and constraints); ``--with-amber`` adds the Amber force field
to it (for a model trained as a correction to Amber); ``--ml-atoms SELECTION`` runs it on those
atoms only, with Amber for the rest (hybrid ML/MM, e.g. ``--model DIR --ml-atoms "resname LIG"``).

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

from .. import data
from ..workflows import analyse_run, ligand_for_run
from ..io import find_checkpoint, read_checkpoint_metadata
from ..md import (DEFAULT_MAX_TEMPERATURE_FACTOR, EQUILIBRATION_FRACTION, after_equilibration, simulate,
                  speed_note)
from ._ensemble import add_ensemble_arguments, run_ensemble_from_args
from ._openmm import is_openmm_system, load_input, openmm_run_settings
from ._settings import DEMO_OUT, DEMO_STEPS, IMPLICIT_SOLVENTS, enable_x64, \
    run_settings, use_model

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
    run.add_argument("--ml-atoms", default=None, metavar="SELECTION",
                     help="with --model: hybrid ML/MM (mechanical embedding, as openmm-ml's createMixedSystem): the "
                          "model describes only these atoms, the Amber force field (as --nonbonded/--cutoff/"
                          "--implicit-solvent set it) everything else and the ML-MM interactions; SELECTION is "
                          "'resname NAME', 0-based atom ranges such as '0-23', or a comma-separated union of them")
    run.add_argument("--ligand", default=None, metavar="RESNAME",
                     help="residue name of a bound ligand: writes DIR/analysis.csv (ligand RMSD, contacts, hydrogen "
                          "bonds, interaction energy, bound flag per frame) and DIR/pocket_rmsf.csv after the run; "
                          "default: the ligand of a 'diffmd prepare' folder (its prepare.json)")

    add_ensemble_arguments(run)  # --replicas R, --batch LIST.txt
    run.set_defaults(func=run_command)
    return run


def run_command(args) -> int:
    """Run ``diffmd run`` for parsed ``args``; returns the exit status.

    Raises:
        DiffmdError: bad input (``diffmd.cli.main`` prints it and exits with 2).
    """
    openmm_input = is_openmm_system(args.prmtop)
    if openmm_input:
        openmm_run_settings(args, {})  # flag errors before anything runs
    if args.replicas != 1 or args.batch:  # the ensemble path also refuses --replicas 0
        return run_ensemble_from_args(args)
    kw = run_settings(args)
    if openmm_input:
        kw = openmm_run_settings(args, kw)
    factor = getattr(args, "max_temperature_factor", DEFAULT_MAX_TEMPERATURE_FACTOR)
    kw["max_temperature_factor"] = None if factor == 0 else factor
    if kw["resume"] and _finished(kw["out"], kw["steps"]):
        return 0
    enable_x64()
    if args.prmtop is None:
        prmtop, coords = data.t4_lysozyme()
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

        analyse_run(kw["out"], system, ligand, implicit_solvent=gb_model)
        files += ["analysis.csv", "pocket_rmsf.csv", "analysis.json"]
    print(f"  outputs in {os.path.abspath(kw['out'])}: {', '.join(files)}")
    return 0


def _finished(out: str, steps: int) -> bool:
    """Whether ``out`` holds a checkpoint at or past ``steps`` (then say so); notes a fresh start."""
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
