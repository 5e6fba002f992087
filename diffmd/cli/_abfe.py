"""``diffmd abfe``: an absolute binding free energy from the command line.

    diffmd abfe complex.prmtop complex.inpcrd --ligand B2 --implicit-solvent obc2 --out abfe1
    diffmd abfe complex.prmtop complex.rst7 --ligand LIG --nonbonded pme \\
        --solvent-prmtop ligand-water.prmtop --solvent-coords ligand-water.rst7 --out abfe2

Runs ``diffmd.free_energy.abfe`` (complex and solvent legs as vmapped ensembles of lambda
windows with Hamiltonian replica exchange, MBAR, a Boresch or flat-bottom restraint with its
standard-state correction) and writes ``DIR/result.json``, ``DIR/overlap.png``,
``DIR/convergence.png`` and each leg's window files (``DIR/complex/member-000/`` ...); the
result is printed as JSON too. Exits 2 with a message on bad input (an unknown residue name,
too few windows, a missing solvent leg in explicit water).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import free_energy
from ..io import load_amber
from ..kernels.errors import InputError
from ..potentials.amber import IMPLICIT_SOLVENTS
from ._settings import enable_x64

#: defaults of --dt [ps] and --precision (those of ``diffmd run``)
DEFAULT_DT = 0.002
DEFAULT_PRECISION = "mixed"


def add_abfe_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``abfe`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "abfe", help="absolute binding free energy of a ligand (alchemical windows, replica exchange, MBAR)",
        description="Absolute binding free energy by alchemical decoupling: complex and solvent legs, each a set of "
                    "lambda windows run as one vmapped ensemble with Hamiltonian replica exchange, analysed by MBAR; "
                    "a receptor-ligand restraint with its analytic standard-state correction. In implicit solvent "
                    "the solvent leg is the complex's ligand alone; in explicit water give --solvent-prmtop and "
                    "--solvent-coords.")
    p.add_argument("prmtop", help="Amber prmtop/parm7 of the complex (receptor + ligand)")
    p.add_argument("coords", help="coordinates of the bound complex: inpcrd/rst7/crd, NetCDF restart or PDB")
    p.add_argument("--ligand", required=True, metavar="RESNAME", help="residue name of the ligand (e.g. B2, LIG)")
    p.add_argument("--nonbonded", choices=["nocutoff", "cutoff", "pme"], default=None,
                   help="nonbonded method (default nocutoff)")
    p.add_argument("--cutoff", type=float, default=None, help="nonbonded cutoff in nm (default 1.0)")
    p.add_argument("--implicit-solvent", choices=IMPLICIT_SOLVENTS, default=None,
                   help="generalized Born implicit solvent (obc2, obc1, hct); the solvent leg is then the ligand alone")
    p.add_argument("--solvent-prmtop", default=None, metavar="P", help="prmtop of the ligand in water (explicit solvent)")
    p.add_argument("--solvent-coords", default=None, metavar="C", help="coordinates of the ligand in water")
    p.add_argument("--windows", type=int, default=12, metavar="N",
                   help="lambda windows per leg (default 12; the complex's first is the unrestrained complex)")
    p.add_argument("--ns-per-window", type=float, default=1.0, metavar="T",
                   help="simulated time of every window in ns (default 1.0)")
    p.add_argument("--steps-per-iteration", type=int, default=500, metavar="N",
                   help="steps between replica exchanges and energy samples (default 500)")
    p.add_argument("--equilibration", type=float, default=0.1, metavar="F",
                   help="fraction of each leg's iterations dropped as equilibration (default 0.1)")
    p.add_argument("--restraint", choices=["boresch", "flat-bottom"], default="boresch",
                   help="receptor-ligand restraint (default boresch, atoms chosen automatically)")
    p.add_argument("--mode", choices=["decouple", "annihilate"], default="decouple",
                   help="keep the ligand's intramolecular interactions (decouple, default) or switch them off too")
    p.add_argument("--dt", type=float, default=None, help=f"time step in ps (default {DEFAULT_DT})")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction in 1/ps (default 1)")
    p.add_argument("--constraints", choices=["none", "hbonds", "allbonds"], default=None,
                   help="bond constraints (default hbonds)")
    p.add_argument("--hmr", type=float, default=None, metavar="AMU", help="hydrogen mass repartitioning (amu)")
    p.add_argument("--precision", choices=["double", "mixed", "single"], default=None,
                   help=f"precision of the dynamics (default {DEFAULT_PRECISION}; MBAR always runs in float64)")
    p.add_argument("--seed", type=int, default=0, help="random seed of velocities, noise and exchanges")
    p.add_argument("--no-minimize", action="store_true", help="do not minimize the starting structures")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=abfe_command)
    return p


def abfe_command(args) -> int:
    enable_x64()  # MBAR and mixed precision need float64

    if (args.solvent_prmtop is None) != (args.solvent_coords is None):
        raise InputError("--solvent-prmtop and --solvent-coords go together: give both (the ligand in water), or "
                         "neither with --implicit-solvent")
    if args.implicit_solvent is not None and args.nonbonded == "pme":
        raise InputError(f"--implicit-solvent {args.implicit_solvent} cannot be combined with --nonbonded pme")
    if args.nonbonded == "nocutoff" and args.cutoff is not None:
        raise InputError("--cutoff has no effect with --nonbonded nocutoff; drop it or choose --nonbonded cutoff")
    for path in (args.prmtop, args.coords, args.solvent_prmtop, args.solvent_coords):
        if path is not None and not os.path.isfile(path):
            raise InputError(f"{path}: no such file")
    complex_system = load_amber(args.prmtop, args.coords)
    solvent = None if args.solvent_prmtop is None else load_amber(args.solvent_prmtop, args.solvent_coords)
    result = free_energy.abfe(
        complex_system, args.ligand, solvent_system=solvent, nonbonded=args.nonbonded,
        cutoff=None if args.nonbonded in (None, "nocutoff") else args.cutoff, implicit_solvent=args.implicit_solvent,
        windows=args.windows, ns_per_window=args.ns_per_window, steps_per_iteration=args.steps_per_iteration,
        equilibration=args.equilibration, restraint=args.restraint, mode=args.mode, temperature=args.temperature,
        dt=DEFAULT_DT if args.dt is None else args.dt, friction=args.friction,
        constraints=args.constraints or "hbonds", hydrogen_mass=args.hmr,
        precision=args.precision or DEFAULT_PRECISION, seed=args.seed, minimize=not args.no_minimize,
        out=args.out, progress=False if args.no_progress else None)
    summary = {k: v for k, v in result.to_json().items() if k not in ("convergence_kcal_per_mol",)}
    summary["legs"] = {name: {k: leg[k] for k in ("dg_kcal_per_mol", "dg_error_kcal_per_mol", "windows",
                                                  "simulated_ns", "exchange_acceptance", "wall_seconds")}
                       for name, leg in summary["legs"].items()}
    summary["files"] = [os.path.join(args.out, f) for f in ("result.json", "overlap.png", "convergence.png")]
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
