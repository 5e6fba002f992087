"""Settings shared by ``diffmd run`` and its ensemble form: the demo, defaults, flag checks.

``run_settings`` turns parsed ``diffmd run`` flags into ``diffmd.simulate`` keywords (dt in ps,
temperature in K, pressure in bar); ``use_model`` swaps in a ``--model`` potential.
"""

from __future__ import annotations

import os

import jax

from ..kernels.errors import InputError
from ..free_energy import select_atoms
from ..learn.train import load_model, mlmm_model
from ..potentials.neural import sum_potentials

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


def enable_x64():
    # The command line is an application, not a library: it may choose float64
    # for the whole process (library imports never do).
    jax.config.update("jax_enable_x64", True)


def run_settings(args) -> dict:
    """The keyword arguments of ``simulate`` from the parsed flags (demo defaults applied)."""
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
        ml_atoms = getattr(args, "ml_atoms", None)
        if ml_atoms is not None and args.with_amber:
            raise InputError("--with-amber and --ml-atoms do not combine: with --ml-atoms the Amber force field "
                             "already describes every atom outside the selection; drop --with-amber")
        if amber_flags and not args.with_amber and ml_atoms is None:
            raise InputError(f"{', '.join(amber_flags)} set(s) the Amber force field, which --model replaces; add "
                             "--with-amber to sum the two, or drop the flag(s)")
    elif args.with_amber:
        raise InputError("--with-amber only applies with --model DIR")
    elif getattr(args, "ml_atoms", None) is not None:
        raise InputError("--ml-atoms selects the atoms a neural model describes: add --model DIR (a folder "
                         "'diffmd train' wrote), or drop --ml-atoms")
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
    (plus Amber with ``--with-amber``; on the ``--ml-atoms`` only, Amber for the rest), the Amber-only
    settings removed; ``kw`` as is without it."""
    if getattr(args, "model", None) is None:
        return kw
    kw = dict(kw)
    amber = dict(nonbonded=kw.pop("nonbonded"), cutoff=kw.pop("cutoff"), implicit_solvent=kw.pop("implicit_solvent"))
    if getattr(args, "ml_atoms", None) is not None:
        ml = select_atoms(system, args.ml_atoms, role="--ml-atoms")
        kw["potential"] = mlmm_model(args.model, system, ml, **amber, precision=kw["precision"])
        return kw
    potential = load_model(args.model, system.topology.elements)
    if args.with_amber:
        potential = sum_potentials(system.energy_fn(**amber, precision=kw["precision"]), potential)
    kw["potential"] = potential
    return kw
