"""``diffmd prepare PROTEIN.pdb LIGAND.sdf --out DIR``: Amber files for a protein-ligand complex.

Needs the ``prepare`` extra (``pip install "diffmd[prepare]"``); see ``diffmd.prepare``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..workflows import DEFAULT_IONIC_STRENGTH, DEFAULT_PADDING_NM, LIGAND_FORCE_FIELDS, PROTEIN_FORCE_FIELDS, SOLVENTS, prepare


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``prepare`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "prepare", help="Amber complex/receptor/ligand files from a protein PDB and a ligand SDF",
        description="Build Amber-parameterised complex, receptor and ligand files (prmtop + inpcrd each, "
                    "complex.pdb and prepare.json) from a protein PDB and a ligand SDF in its bound pose: "
                    "PDBFixer repairs and protonates the protein, antechamber gives the ligand AM1-BCC charges and "
                    "GAFF2 types, tleap builds the files. Needs: pip install \"diffmd[prepare]\".")
    p.add_argument("protein", help="protein PDB (or PDBx/mmCIF); waters, ions and other molecules are removed")
    p.add_argument("ligand", help="SDF/MOL with one molecule in 3D, posed in the protein's frame")
    p.add_argument("--out", default="prepared", metavar="DIR", help="output folder (default: prepared)")
    p.add_argument("--solvent", choices=SOLVENTS, default="obc2",
                   help="obc2: implicit solvent, mbondi2 radii (default); tip3p: a rectangular water box with ions")
    p.add_argument("--padding", type=float, default=None, metavar="NM",
                   help=f"tip3p: solute-to-box-edge distance in nm (default {DEFAULT_PADDING_NM:g})")
    p.add_argument("--ionic-strength", type=float, default=None, metavar="M",
                   help=f"tip3p: NaCl beyond neutralisation in mol/L (default {DEFAULT_IONIC_STRENGTH:g})")
    p.add_argument("--ligand-charge", type=int, default=None, metavar="Q",
                   help="net ligand charge in e (default: the SDF's formal charges)")
    p.add_argument("--protein-ff", choices=tuple(PROTEIN_FORCE_FIELDS), default="ff14SB")
    p.add_argument("--ligand-ff", choices=LIGAND_FORCE_FIELDS, default="gaff2")
    p.add_argument("--ligand-name", default="LIG", help="residue name of the ligand (default LIG)")
    p.add_argument("--ph", type=float, default=7.0, help="pH of the protein's protonation states (default 7)")
    p.set_defaults(func=prepare_command)
    return p


def prepare_command(args) -> int:
    """Run ``diffmd prepare``; returns the exit status (errors propagate to ``diffmd.cli.main``)."""

    result = prepare(args.protein, args.ligand, args.out, solvent=args.solvent, padding=args.padding,
                     ionic_strength=args.ionic_strength, ligand_charge=args.ligand_charge,
                     protein_ff=args.protein_ff, ligand_ff=args.ligand_ff, ligand_name=args.ligand_name, ph=args.ph)
    rec = result.record
    print(f"diffmd prepare: {rec['complex']['n_atoms']} atoms in the complex ({args.solvent}), ligand "
          f"{rec['ligand']['residue_name']} with net charge {rec['ligand']['net_charge']:+d} e, written to {result.out}")
    fixes = {k: v for k, v in rec["protein"].items() if k not in ("file", "ph") and v}
    print("  protein fixes: " + json.dumps(fixes))
    print(f"  record: {os.path.join(result.out, 'prepare.json')}")
    print(f"  next: cd {result.out} && {rec['run_hint']}", file=sys.stdout)
    return 0
