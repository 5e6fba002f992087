"""tleap scripts for ``prepare``: the protein force field, the GAFF ligand, GB radii or a TIP3P box
with ions, and the three parameter/coordinate pairs (complex, receptor, ligand)."""

from __future__ import annotations

import os
import re
import subprocess

from ..kernels.errors import InputError

PROTEIN_FORCE_FIELDS = {"ff14SB": "leaprc.protein.ff14SB", "ff19SB": "leaprc.protein.ff19SB"}
LIGAND_LEAPRC = {"gaff2": "leaprc.gaff2", "gaff": "leaprc.gaff"}
#: molar concentration of pure water [mol/L], to turn an ionic strength into ion pairs per water
WATER_MOLARITY = 55.4


def run_tleap(tleap: str, script: str, workdir: str, source: str) -> str:
    """Run a tleap script in ``workdir``; returns its log. tleap exits 0 on most errors, so
    the log is searched for them too.

    Raises:
        InputError: tleap failed or reported an error (the last lines of its log quoted).
    """
    path = os.path.join(workdir, "tleap.in")
    with open(path, "w") as fh:
        fh.write(script)
    proc = subprocess.run([tleap, "-f", "tleap.in"], cwd=workdir, capture_output=True, text=True, check=False)
    log = (proc.stdout or "") + (proc.stderr or "")
    with open(os.path.join(workdir, "tleap.log"), "a") as fh:
        fh.write(log)
    bad = [line for line in log.splitlines() if re.search(r"FATAL|^Error!|Could not open|Parameter file was not saved|"
                                                         r"Failed to generate parameters|does not have a type", line)]
    if proc.returncode != 0 or bad:
        tail = "\n".join((bad or log.strip().splitlines())[-12:])
        raise InputError(f"{source}: tleap failed (log in {os.path.join(workdir, 'tleap.log')}):\n{tail}")
    return log


def header(protein_ff: str, ligand_ff: str, solvent: str) -> list:
    lines = [f"source {PROTEIN_FORCE_FIELDS[protein_ff]}", f"source {LIGAND_LEAPRC[ligand_ff]}"]
    if solvent == "tip3p":
        lines.append("source leaprc.water.tip3p")
    # mbondi2 radii are what OpenMM's and diffmd's OBC2 expect (Amber igb=5)
    lines += ["set default PBRadii mbondi2", "loadamberparams ligand.frcmod", "LIGAND = loadmol2 ligand.mol2",
              "RECEPTOR = loadpdb receptor_leap.pdb"]
    return lines


def disulfide_lines(pairs) -> list:
    return [f"bond RECEPTOR.{a}.SG RECEPTOR.{b}.SG" for a, b in pairs]


def dry_script(protein_ff: str, ligand_ff: str, solvent: str, disulfides, out: str) -> str:
    """Receptor, ligand and (for OBC2) the complex, without water."""
    lines = header(protein_ff, ligand_ff, solvent) + disulfide_lines(disulfides)
    lines += ["COMPLEX = combine {RECEPTOR LIGAND}",
              f"saveamberparm RECEPTOR {out}/receptor.prmtop {out}/receptor.inpcrd",
              f"saveamberparm LIGAND {out}/ligand.prmtop {out}/ligand.inpcrd",
              "charge COMPLEX"]
    if solvent == "obc2":
        lines += [f"saveamberparm COMPLEX {out}/complex.prmtop {out}/complex.inpcrd", f"savepdb COMPLEX {out}/complex.pdb"]
    return "\n".join(lines + ["quit", ""])


def solvated_script(protein_ff: str, ligand_ff: str, disulfides, out: str, padding_nm: float,
                    ion_pairs: int | None) -> str:
    """The complex in a rectangular TIP3P box with ``padding_nm`` around it, neutralised with Na+/Cl-
    and, when ``ion_pairs`` is given, that many extra Na+/Cl- pairs (replacing random waters)."""
    lines = header(protein_ff, ligand_ff, "tip3p") + disulfide_lines(disulfides)
    lines += ["COMPLEX = combine {RECEPTOR LIGAND}", f"solvateBox COMPLEX TIP3PBOX {padding_nm * 10.0:.4f}",
              "addIonsRand COMPLEX Na+ 0", "addIonsRand COMPLEX Cl- 0"]
    if ion_pairs:
        lines.append(f"addIonsRand COMPLEX Na+ {ion_pairs} Cl- {ion_pairs}")
    if ion_pairs is not None:
        lines += [f"saveamberparm COMPLEX {out}/complex.prmtop {out}/complex.inpcrd",
                  f"savepdb COMPLEX {out}/complex.pdb"]
    return "\n".join(lines + ["quit", ""])


def net_charge(log: str) -> float:
    """The net charge [e] that tleap's ``charge COMPLEX`` printed."""
    found = re.findall(r"Total (?:unperturbed )?charge:?\s*(-?[0-9.]+)", log)
    if not found:
        raise InputError("tleap printed no charge for the complex (its log is in the output folder)")
    return float(found[-1])


def added_waters(log: str) -> int:
    """Number of water residues solvateBox added (parsed from tleap's log)."""
    found = re.findall(r"Added (\d+) residues", log)
    if not found:
        raise InputError("tleap's solvateBox reported no waters (its log is in the output folder)")
    return int(found[-1])


def salt_pairs(ionic_strength: float, n_waters: int) -> int:
    """Na+/Cl- pairs for an ionic strength [mol/L] in ``n_waters`` waters (pairs per water = I / 55.4 M,
    as OpenMM's Modeller counts them)."""
    return round(ionic_strength * n_waters / WATER_MOLARITY)
