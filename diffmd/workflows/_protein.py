"""The protein half of ``prepare``: PDBFixer for missing atoms and protonation, then a heavy-atom
PDB with Amber residue names (HID/HIE/HIP, CYX, ASH, GLH, LYN, CYM) that tleap reads.

tleap rebuilds every hydrogen from its templates, so the protonation states PDBFixer chose
(OpenMM's Modeller at the given pH) travel as residue names and hydrogen naming
conventions never matter. Waters, ions and other molecules outside the protein chains are
removed (the ligand comes from the SDF; solvent and ions are added again for TIP3P).
"""

from __future__ import annotations

import os

import numpy as np

from ..kernels.errors import InputError

AMINO_ACIDS = frozenset("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL".split())
_WATER = frozenset(("HOH", "WAT", "H2O", "TIP3", "TIP", "SOL", "DOD"))
#: C(i)-N(i+1) distance [nm] above which consecutive residues are a chain break, not a peptide bond
CHAIN_BREAK_NM = 0.2
#: SG-SG distance [nm] below which two cysteines are a disulfide (about 0.205 nm when bonded)
DISULFIDE_NM = 0.25


def _in_chain(residues: list, k: int) -> bool:
    """Whether residue k has amino acids on both sides in its chain (so removing it would cut the chain)."""
    before = any(r.name in AMINO_ACIDS for r in residues[:k])
    after = any(r.name in AMINO_ACIDS for r in residues[k + 1:])
    return before and after


def _amber_name(residue, h_names: set, disulfide: bool) -> str:
    """Amber residue name of a protonated standard residue, from the hydrogens PDBFixer gave it."""
    name = residue.name
    if name == "HIS":
        if "HD1" in h_names and "HE2" in h_names:
            return "HIP"
        return "HID" if "HD1" in h_names else "HIE"
    if name == "CYS":
        return "CYX" if disulfide else ("CYS" if "HG" in h_names else "CYM")
    if name == "ASP" and "HD2" in h_names:
        return "ASH"
    if name == "GLU" and "HE2" in h_names:
        return "GLH"
    if name == "LYS" and not {"HZ1", "HZ2", "HZ3"} <= h_names:
        return "LYN"
    return name


def fix_protein(path: str, ph: float = 7.0):
    """Read a protein PDB, repair it with PDBFixer and decide protonation states.

    Args:
        path: PDB (or PDBx/mmCIF) file of the receptor.
        ph: pH for PDBFixer's protonation (OpenMM Modeller's pKa rules).

    Returns:
        ``(residues, notes)``: ``residues`` is a list of ``(amber_name, chain_id, residue_id,
        [(atom_name, element_symbol, xyz_nm), ...], starts_new_chain)`` of heavy atoms in file order,
        ``notes`` a dict of every change (missing atoms and residues added, residues replaced,
        molecules removed, protonation states, disulfides, chain breaks).

    Raises:
        InputError: unreadable file, no amino acids, a non-standard residue inside a chain
            that PDBFixer cannot map to a standard one.
    """
    from openmm import unit
    from pdbfixer import PDBFixer

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such protein file")
    try:
        fixer = PDBFixer(filename=path)
    except Exception as exc:  # noqa: BLE001  PDBFixer/OpenMM raise plain exceptions for malformed files
        raise InputError(f"{path}: cannot be read as a PDB/PDBx file ({exc})") from None
    notes = {"file": os.path.abspath(path), "ph": ph}
    fixer.findNonstandardResidues()
    notes["replaced_residues"] = [f"{r.name} {r.id} chain {r.chain.id} -> {new}" for r, new in fixer.nonstandardResidues]
    fixer.replaceNonstandardResidues()
    chains = list(fixer.topology.chains())
    if not any(r.name in AMINO_ACIDS for r in fixer.topology.residues()):
        raise InputError(f"{path}: no standard amino acids found; prepare builds protein receptors (ff14SB/ff19SB)")
    removed = []
    for chain in chains:
        residues = list(chain.residues())
        for k, res in enumerate(residues):
            if res.name in AMINO_ACIDS or res.name in _WATER:
                continue
            if _in_chain(residues, k):
                raise InputError(f"{path}: residue {res.name} {res.id} (chain {chain.id}) is not a standard amino "
                                 "acid and PDBFixer has no standard residue to replace it with; it sits inside a "
                                 "protein chain, so removing it would break the chain. Replace it with its parent "
                                 "amino acid in the PDB (or remove it and let PDBFixer rebuild the gap)")
            removed.append(f"{res.name} {res.id} chain {chain.id}")
    notes["removed_molecules"] = removed
    notes["removed_waters"] = sum(1 for r in fixer.topology.residues() if r.name in _WATER)
    fixer.removeHeterogens(keepWater=False)
    fixer.findMissingResidues()
    # fill gaps inside chains; leave out missing termini (flexible tails PDBFixer would build in vacuum)
    chain_lengths = {c.index: len(list(c.residues())) for c in fixer.topology.chains()}
    for key in list(fixer.missingResidues):
        if key[1] == 0 or key[1] == chain_lengths[key[0]]:
            del fixer.missingResidues[key]
    notes["added_residues"] = sum(len(v) for v in fixer.missingResidues.values())
    fixer.findMissingAtoms()
    notes["added_heavy_atoms"] = sum(len(v) for v in fixer.missingAtoms.values())
    notes["added_terminal_atoms"] = sum(len(v) for v in fixer.missingTerminals.values())
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(ph)
    positions = np.asarray(fixer.positions.value_in_unit(unit.nanometer))
    return _heavy_residues(fixer.topology, positions, notes, path)


def _heavy_residues(topology, positions: np.ndarray, notes: dict, path: str):
    sg = {res.index: positions[a.index] for res in topology.residues() if res.name == "CYS"
          for a in res.atoms() if a.name == "SG"}
    keys = sorted(sg)
    disulfides = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if np.linalg.norm(sg[a] - sg[b]) < DISULFIDE_NM:
                disulfides.append((a, b))
    bonded = {k for pair in disulfides for k in pair}
    out, states, breaks = [], {}, []
    for chain in topology.chains():
        previous_c = None
        for res in chain.residues():
            atoms = list(res.atoms())
            h_names = {a.name for a in atoms if a.element is not None and a.element.symbol == "H"}
            name = _amber_name(res, h_names, res.index in bonded)
            if name != res.name or res.name == "HIS":
                states[f"{res.name} {res.id} chain {chain.id}"] = name
            heavy = [(a.name, a.element.symbol, positions[a.index]) for a in atoms
                     if a.element is not None and a.element.symbol != "H"]
            n_atom = next((p for n, _, p in heavy if n == "N"), None)
            new_chain = previous_c is None
            if previous_c is not None and n_atom is not None and np.linalg.norm(n_atom - previous_c) > CHAIN_BREAK_NM:
                new_chain = True
                breaks.append(f"before {res.name} {res.id} chain {chain.id}")
            out.append((name, chain.id, res.id, heavy, new_chain))
            previous_c = next((p for n, _, p in heavy if n == "C"), None)
    index = {res.index: k for k, res in enumerate(topology.residues())}
    notes["protonation_states"] = states
    notes["disulfides"] = [f"{out[index[a]][0]} {out[index[a]][2]} - {out[index[b]][0]} {out[index[b]][2]}"
                           for a, b in disulfides]
    notes["chain_breaks"] = breaks
    # 1-based residue numbers in the written file (tleap numbers residues in file order)
    notes["_disulfide_leap_residues"] = [(index[a] + 1, index[b] + 1) for a, b in disulfides]
    if not out:
        raise InputError(f"{path}: nothing left after removing waters and heterogens")
    return out, notes


def write_leap_pdb(residues: list, path: str) -> None:
    """Write heavy atoms as a PDB for tleap (Angstrom), a TER record after each chain or chain break."""
    lines, serial = [], 1
    for k, (name, chain_id, res_id, atoms, new_chain) in enumerate(residues):
        if new_chain and k > 0:
            lines.append("TER")
        seq = int("".join(ch for ch in str(res_id) if ch.isdigit() or ch == "-") or k + 1)
        for atom_name, element, xyz in atoms:
            label = atom_name if len(atom_name) == 4 else f" {atom_name:<3s}"
            x, y, z = (float(v) * 10.0 for v in xyz)
            lines.append(f"ATOM  {serial % 100000:5d} {label:4s} {name:>3s} {(chain_id or 'A')[:1]:1s}"
                         f"{seq % 10000:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {element:>2s}")
            serial += 1
    lines += ["TER", "END"]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
