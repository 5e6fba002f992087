"""The ``diffmd`` command line: ``energy``, ``run``, ``prepare``, ``bench``, ``train``."""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from ..kernels.errors import DiffmdError, InputError
from ..md import cache_disabled_by_env, enable_compilation_cache
from ..learn.train import load_config, run_config
from ._bench import main as bench_main
from ._openmm import PHYSICS_FLAGS, is_openmm_system, load_input, reject_physics_flags
from ._run import add_run_parser
from ._prepare import add_prepare_parser
from ._abfe import add_abfe_parser
from ._settings import IMPLICIT_SOLVENTS, enable_x64


def _energy(args) -> int:
    enable_x64()
    if is_openmm_system(args.prmtop):  # the System's own physics: its flags are errors, checked first
        reject_physics_flags(args, args.prmtop, PHYSICS_FLAGS[:3])
    system = load_input(args.prmtop, args.coords)
    if system.positions is None:
        raise InputError(f"{args.coords}: no positions read")
    params, energy_fn = system.energy_fn(nonbonded=args.nonbonded, cutoff=args.cutoff,
                                         implicit_solvent=args.implicit_solvent, precision=args.precision)
    box = system.box if energy_fn.nonbonded != "nocutoff" else None
    nbrs = energy_fn.neighbor_list(system.positions, box)
    terms_fn = jax.jit(energy_fn.terms)
    terms = terms_fn(params, system.positions, box, nbrs)
    out = {
        "units": "kJ/mol",
        "n_atoms": system.n_atoms,
        "total": float(sum(float(v) for v in terms.values())),
        "terms": {k: float(v) for k, v in terms.items()},
        "settings": {"nonbonded": energy_fn.nonbonded, "cutoff_nm": energy_fn.cutoff,
                     "implicit_solvent": energy_fn.implicit_solvent, "precision": args.precision},
    }
    if args.forces:
        grad = jax.jit(jax.grad(energy_fn, argnums=1))(params, system.positions, box, nbrs)
        np.save(args.forces, -np.asarray(grad, dtype=np.float64))
        out["forces_file"] = args.forces
        out["forces_units"] = "kJ/mol/nm"
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


class _SubcommandParser(argparse.ArgumentParser):
    """The parser of one subcommand: arguments it does not know are reported with its own usage.

    argparse hands a subcommand's unknown arguments back to the top-level parser, which then
    prints ``usage: diffmd [-h] {energy,run,...}``; ``diffmd run --bogus`` should show the
    usage of ``diffmd run`` instead (exit status 2, as argparse errors have).
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmd", description="JAX-native differentiable molecular dynamics")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    energy = sub.add_parser("energy", help="per-term energies as JSON (kJ/mol), forces to .npy (kJ/mol/nm)")
    energy.add_argument("prmtop", help="Amber prmtop/parm7 file, or an OpenMM System XML (XmlSerializer)")
    energy.add_argument("coords", help="inpcrd/rst7/crd, NetCDF restart or PDB (kind judged by content); with a System "
                        "XML a PDB or a State XML")
    energy.add_argument("--nonbonded", choices=["nocutoff", "cutoff", "pme"], default=None,
                        help="nonbonded method (default nocutoff, as OpenMM's createSystem; an OpenMM System's own)")
    energy.add_argument("--cutoff", type=float, default=None, help="nonbonded cutoff in nm (default 1.0)")
    energy.add_argument("--implicit-solvent", choices=IMPLICIT_SOLVENTS, default=None,
                        help="generalized Born model: obc2 (Amber igb=5), obc1 (igb=2) or hct (igb=1), as OpenMM's "
                             "OBC2/OBC1/HCT (default none)")
    energy.add_argument("--precision", choices=["double", "mixed", "single"], default="double")
    energy.add_argument("--forces", metavar="OUT.npy", help="write forces (N, 3) in kJ/mol/nm")
    energy.set_defaults(func=_energy)

    add_run_parser(sub)
    add_prepare_parser(sub)
    add_abfe_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks against OpenMM and jax-md")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    train = sub.add_parser("train", help="train a neural potential from a TOML config (energy and force matching)")
    train.add_argument("config", help="TOML file with [data], [model], [train] and [output] tables "
                       "(see examples/train_schnet_alanine.toml)")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar (default: only on a terminal)")
    train.set_defaults(func=_train)
    for command in sub.choices.values():
        command.add_argument("--no-compilation-cache", dest="compilation_cache", action="store_false",
                             help="do not keep compiled functions on disk (default: kept under "
                                  "~/.cache/diffmd/jax, or $DIFFMD_COMPILATION_CACHE; "
                                  "DIFFMD_COMPILATION_CACHE=off also turns it off)")
    return parser


def _train(args) -> int:
    enable_x64()  # the generated labels are computed in double precision
    config = load_config(args.config)
    if args.resume:
        config["output"]["resume"] = True
    summary = run_config(config, progress=args.progress)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _bench(args) -> int:
    return bench_main(args.rest)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compilation_cache and not cache_disabled_by_env():
        # a second run of the same command loads its compiled functions instead of compiling them
        enable_compilation_cache()
    try:
        return args.func(args)
    except DiffmdError as exc:
        print(f"diffmd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
