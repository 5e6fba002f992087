"""PDB files: a writer (one structure or one MODEL with CRYST1, ATOM/HETATM, TER and CONECT
records) and a reader of the atoms' positions, names and elements and of the CRYST1 cell.

Positions are nm in diffmd and Angstrom in the file (8.3f, the format's fixed columns), the only
conversion in this module. Column layout follows the wwPDB format description, version 3.3
(ATOM: serial 7-11, name 13-16, resName 18-20, chainID 22, resSeq 23-26, x y z 31-54, occupancy
55-60, tempFactor 61-66, element 77-78). Readers that must round-trip: MDTraj, OpenMM, VMD.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import numpy as np

from ..system import NUMBER_BY_SYMBOL, SYMBOL_BY_NUMBER, Topology
from ..kernels.constants import ANGSTROM
from ..kernels.errors import InputError

# Residues written as ATOM records; everything else (ligands, ions, water, as in the PDB
# archive) is HETATM. Amber and CHARMM protonation/termini variants count as standard.
_AMINO = (
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "HID HIE HIP HSD HSE HSP CYX CYM ASH GLH LYN ARN TYM SEC PYL"
).split()
_STANDARD = set(_AMINO) | {"N" + r for r in _AMINO} | {"C" + r for r in _AMINO}
_STANDARD |= {"ACE", "NME", "NMA", "NHE", "NH2"}
_NUCLEIC = "DA DC DG DT DU DI A C G U I RA RC RG RU".split()
_STANDARD |= set(_NUCLEIC) | {n + end for n in _NUCLEIC for end in ("5", "3", "N")}
# links between standard residues that every reader rebuilds from templates (peptide, phosphodiester)
_BACKBONE_LINKS = {frozenset(("C", "N")), frozenset(("O3'", "P")), frozenset(("O3*", "P"))}
_CHAIN_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def box_lengths_angles(box) -> tuple[np.ndarray, np.ndarray]:
    """Cell lengths and angles of box vectors.

    Args:
        box: (3, 3) box vectors as rows a, b, c [nm].

    Returns:
        ``(lengths, angles)``: (3,) |a|, |b|, |c| [nm] and (3,) alpha = angle(b, c),
        beta = angle(a, c), gamma = angle(a, b) [degrees].
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (3, 3) or not np.all(np.isfinite(box)):
        raise InputError(f"box must be finite (3, 3) vectors [nm], got shape {box.shape}")
    lengths = np.linalg.norm(box, axis=1)
    if np.any(lengths <= 0):
        raise InputError(f"box vectors must be non-zero, got lengths {lengths} nm")

    def angle(u, v):
        cos = np.dot(box[u], box[v]) / (lengths[u] * lengths[v])
        return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

    return lengths, np.array([angle(1, 2), angle(0, 2), angle(0, 1)])


def is_hetero(residue_name: str) -> bool:
    """Whether a residue is written as HETATM (not a standard amino acid, cap or nucleotide)."""
    return residue_name.strip().upper() not in _STANDARD


def _atom_name_field(name: str, symbol: str) -> str:
    # PDB convention: a one-letter element's symbol sits in column 14, so short names get a
    # leading space; four-character names and two-letter elements (FE, CL) start in column 13.
    name = name.strip()[:4]
    if len(name) < 4 and len(symbol) < 2 and not name[:1].isdigit():
        name = " " + name
    return f"{name:<4s}"


def _conect_bonds(topology: Topology, hetero: np.ndarray, mode: str) -> np.ndarray:
    bonds = np.asarray(topology.bonds, dtype=np.int64).reshape(-1, 2)
    if mode == "none" or len(bonds) == 0:
        return bonds[:0]
    if mode == "all":
        return bonds
    i, j = bonds[:, 0], bonds[:, 1]
    keep = hetero[i] | hetero[j]
    # bonds between two standard residues that are not the polymer link (disulfides,
    # cyclic peptides, cross-links) are not rebuilt from templates by every reader
    res = np.asarray(topology.residue_index)
    names = topology.atom_names
    for b in np.flatnonzero(~keep & (res[i] != res[j])):
        pair = frozenset((names[i[b]].strip(), names[j[b]].strip()))
        keep[b] = pair not in _BACKBONE_LINKS
    return bonds[keep]


def format_pdb(
    topology: Topology,
    positions,
    box=None,
    *,
    conect: Literal["hetero", "all", "none"] = "hetero",
    model: int | None = None,
    remarks: tuple[str, ...] = (),
) -> str:
    """The text of a PDB file (or of one MODEL of a multi-model file).

    Args:
        topology: atoms, residues, chains and bonds.
        positions: (N, 3) positions [nm]; written as Angstrom with 3 decimals.
        box: (3, 3) box vectors as rows [nm] for a CRYST1 record (space group P 1), or None.
        conect: which bonds get CONECT records: ``"hetero"`` (default) every bond that touches
            a HETATM atom plus inter-residue bonds other than peptide/phosphodiester links
            (disulfides), ``"all"`` every bond, ``"none"`` no CONECT records. Readers build
            bonds of standard residues from templates. No CONECT records are written when
            serial numbers would exceed 99,999 (the field's width).
        model: a MODEL number to wrap the atoms in (multi-model files), or None.
        remarks: REMARK lines (without the record name).

    Returns:
        The PDB text, ending with ``END``.

    Raises:
        InputError: wrong shapes, non-finite positions, coordinates outside the columns'
            range (-999.999 to 9999.999 Angstrom), or an unknown ``conect`` mode.
    """
    if conect not in ("hetero", "all", "none"):
        raise InputError(f"conect must be 'hetero', 'all' or 'none', got {conect!r}")
    n = topology.n_atoms
    xyz = np.asarray(positions, dtype=np.float64).reshape(-1, 3) / ANGSTROM
    if xyz.shape != (n, 3):
        raise InputError(f"positions have shape {np.shape(positions)}, expected ({n}, 3) for this topology")
    if not np.all(np.isfinite(xyz)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(xyz), axis=1))[0])
        raise InputError(f"positions of atom {bad} are NaN or Inf; the structure cannot be written to PDB")
    if xyz.min() < -999.9995 or xyz.max() >= 9999.9995:
        raise InputError(
            "positions exceed the PDB coordinate range (-999.999 to 9999.999 Angstrom); "
            "wrap them into the box first or write a DCD trajectory instead"
        )
    residue_index = np.asarray(topology.residue_index)
    chain_index = np.asarray(topology.chain_index)
    res_hetero = np.array([is_hetero(r) for r in topology.residue_names], dtype=bool)
    hetero = res_hetero[residue_index] if n else np.zeros(0, bool)
    symbols = [SYMBOL_BY_NUMBER.get(int(z), "").upper() for z in topology.elements]  # PDB: upper case

    lines = [f"REMARK   1 {r}"[:80] for r in remarks]
    if box is not None:
        lengths, angles = box_lengths_angles(box)
        a, b, c = lengths / ANGSTROM
        lines.append(f"CRYST1{a:9.3f}{b:9.3f}{c:9.3f}{angles[0]:7.2f}{angles[1]:7.2f}{angles[2]:7.2f} P 1           1")
    if model is not None:
        lines.append(f"MODEL     {model:4d}")
    serial_of = np.zeros(n, dtype=np.int64)
    serial = 1
    for i in range(n):
        r = int(residue_index[i])
        chain = int(chain_index[r])
        record = "HETATM" if hetero[i] else "ATOM  "
        chain_id = _CHAIN_IDS[chain % len(_CHAIN_IDS)]
        res_name = topology.residue_names[r].strip()[:4]
        res_seq = (r + 1) % 10000
        res_field = f"{res_name:>3s}{'' if len(res_name) > 3 else ' '}{chain_id}{res_seq:4d}"  # columns 18-26
        serial_of[i] = serial
        lines.append(
            f"{record}{serial % 100000:5d} {_atom_name_field(topology.atom_names[i], symbols[i])}"
            f" {res_field}    "
            f"{xyz[i, 0]:8.3f}{xyz[i, 1]:8.3f}{xyz[i, 2]:8.3f}{1.0:6.2f}{0.0:6.2f}"
            f"          {symbols[i]:>2s}"
        )
        serial += 1
        last_in_chain = i == n - 1 or int(chain_index[int(residue_index[i + 1])]) != chain
        if last_in_chain:
            lines.append(f"TER   {serial % 100000:5d}      {res_field}")
            serial += 1
    if model is not None:
        lines.append("ENDMDL")
    if serial <= 100000:
        partners: dict[int, list[int]] = {}
        for i, j in _conect_bonds(topology, hetero, conect):
            partners.setdefault(int(i), []).append(int(serial_of[j]))
            partners.setdefault(int(j), []).append(int(serial_of[i]))
        for i in sorted(partners):
            bonded = partners[i]
            for k in range(0, len(bonded), 4):
                lines.append(f"CONECT{serial_of[i]:5d}" + "".join(f"{s:5d}" for s in bonded[k : k + 4]))
    lines.append("END")
    return "\n".join(lines) + "\n"


def write_pdb(
    path: str | os.PathLike,
    topology: Topology,
    positions_nm,
    box=None,
    *,
    conect: Literal["hetero", "all", "none"] = "hetero",
    remarks: tuple[str, ...] = (),
) -> None:
    """Write one structure to a PDB file (see :func:`format_pdb` for the records).

    Args:
        path: file to create (replaced if it exists).
        topology: atoms, residues, chains and bonds.
        positions_nm: (N, 3) positions [nm].
        box: (3, 3) box vectors as rows [nm] (CRYST1 record), or None for no box.
        conect: ``"hetero"``, ``"all"`` or ``"none"`` (see :func:`format_pdb`).
        remarks: REMARK lines.
    """
    text = format_pdb(topology, positions_nm, box, conect=conect, remarks=remarks)
    with open(os.fspath(path), "w", encoding="ascii") as fh:
        fh.write(text)


@dataclasses.dataclass(frozen=True)
class PDBAtoms:
    """The atoms of a PDB file's first model, in file order.

    Attributes:
        positions: (N, 3) [nm].
        names: (N,) atom names (columns 13-16, stripped).
        residue_names: (N,) residue names (columns 18-21, stripped).
        elements: (N,) atomic numbers from columns 77-78 (0 where blank or unknown).
        cell: ``(lengths [nm], angles [deg])`` from CRYST1, or None (no CRYST1, a zero length, or
            the 1 x 1 x 1 Angstrom cell the wwPDB format writes for structures without one).
    """

    positions: np.ndarray
    names: tuple
    residue_names: tuple
    elements: np.ndarray
    cell: tuple | None


def read_pdb_atoms(path: str | os.PathLike) -> PDBAtoms:
    """Read the ATOM/HETATM records of a PDB file's first MODEL (all of them without MODEL records).

    Coordinates are read from their fixed columns (31-38, 39-46, 47-54, Angstrom), exactly as
    written, and converted to nm.

    Raises:
        InputError: unreadable file, no ATOM/HETATM records, or a coordinate field that is not a
            number (the message names the line).
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read PDB file {path!r}: {exc.strerror}") from exc
    xyz, names, residues, elements, cell = [], [], [], [], None
    for number, line in enumerate(lines, start=1):
        record = line[:6]
        if record.startswith(("ATOM", "HETATM")):
            try:
                xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
            except ValueError:
                raise InputError(f"{path}, line {number}: columns 31-54 must hold x, y, z in Angstrom (three 8.3f "
                                 f"fields), got {line[30:54]!r}") from None
            names.append(line[12:16].strip())
            residues.append(line[17:21].strip())
            elements.append(NUMBER_BY_SYMBOL.get(line[76:78].strip().upper(), 0))
        elif record == "CRYST1" and cell is None:
            try:
                lengths = np.array([float(line[6:15]), float(line[15:24]), float(line[24:33])]) * ANGSTROM
                angles = np.array([float(line[33:40]), float(line[40:47]), float(line[47:54])])
            except ValueError:
                raise InputError(f"{path}, line {number}: CRYST1 must hold a, b, c [Angstrom] and alpha, beta, "
                                 f"gamma [degrees] in its fixed columns, got {line.rstrip()!r}") from None
            # a zero length (OpenMM ignores those) or the wwPDB's 1 x 1 x 1 A "no cell" record
            if np.all(lengths > 0) and not np.allclose(lengths, ANGSTROM):
                cell = (lengths, angles)
        elif record.rstrip() in ("ENDMDL", "END"):
            break  # the first model only, as OpenMM's PDBFile.getPositions() gives by default
    if not xyz:
        raise InputError(f"{path}: no ATOM/HETATM records: not a PDB file with coordinates")
    return PDBAtoms(np.asarray(xyz, dtype=np.float64) * ANGSTROM, tuple(names), tuple(residues),
                    np.asarray(elements, dtype=np.int32), cell)
