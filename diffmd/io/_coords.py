"""Coordinate files: Amber ASCII inpcrd/rst7/crd, NetCDF restarts, and PDB files.

Returns positions [nm], velocities [nm/ps] and box vectors [nm] in OpenMM's
reduced form. Amber stores Angstrom and velocities in Angstrom per
(1/20.455) ps; the conversions happen here (and in ``_pdb.py``) and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..system import Topology, require_finite
from ..kernels.constants import ANGSTROM
from ..kernels.errors import InputError
from ..kernels.geometry import reduce_box
from ._kinds import COORDINATE_KINDS, file_kind, wrong_kind
from ._pdb import read_pdb_atoms
from scipy.io import netcdf_file

#: Amber's velocity unit is Angstrom per (1/20.455 ps).
AMBER_VELOCITY_SCALE = 20.455


@dataclasses.dataclass(frozen=True)
class Coordinates:
    """Contents of a coordinate file.

    Attributes:
        positions: (N, 3) [nm].
        velocities: (N, 3) [nm/ps] or None.
        box: (3, 3) reduced box vectors [nm] or None.
    """

    positions: np.ndarray
    velocities: np.ndarray | None = None
    box: np.ndarray | None = None


def box_from_lengths_angles(lengths, angles_deg) -> np.ndarray:
    """Reduced box vectors [nm] from lengths [nm] and angles alpha, beta, gamma [deg]."""
    a, b, c = (float(x) for x in lengths)
    alpha, beta, gamma = (np.deg2rad(float(x)) for x in angles_deg)
    if np.allclose(np.rad2deg([alpha, beta, gamma]), 90.0, atol=1e-6):
        return np.diag([a, b, c])
    cos_a, cos_b, cos_g, sin_g = np.cos(alpha), np.cos(beta), np.cos(gamma), np.sin(gamma)
    va = [a, 0.0, 0.0]
    vb = [b * cos_g, b * sin_g, 0.0]
    cx = c * cos_b
    cy = c * (cos_a - cos_b * cos_g) / sin_g
    vc = [cx, cy, np.sqrt(max(c * c - cx * cx - cy * cy, 0.0))]
    box = np.array([va, vb, vc])
    box[np.abs(box) < 1e-6 * max(a, b, c)] = 0.0
    return reduce_box(box)


def read_coordinates(path: str | os.PathLike, n_atoms: int | None = None,
                     topology: Topology | None = None) -> Coordinates:
    """Read a coordinate file: Amber ASCII or NetCDF, or PDB (the kind is detected by content).

    Args:
        path: inpcrd, rst7, crd, NetCDF restart (.nc, .ncrst; DHFR's JAC.inpcrd is NetCDF)
            or PDB (the ATOM/HETATM records of the first model in file order, box from CRYST1).
        n_atoms: expected atom count (from the prmtop); checked if given.
        topology: the topology the coordinates belong to (sets ``n_atoms``); error messages
            then name atoms, and a PDB's elements are checked against it.

    Raises:
        InputError: unreadable or truncated file, a file of another kind (a prmtop given as
            coordinates), atom-count mismatch, NaN values (naming the first such atom), a PDB
            whose elements (columns 77-78) contradict the topology's.
    """
    path = os.fspath(path)
    if topology is not None:
        n_atoms = topology.n_atoms
    kind = file_kind(path, "coordinates")
    if kind == "netcdf":
        coords = _read_netcdf(path)
    elif kind == "hdf5":
        raise InputError(f"{path}: NetCDF-4 (HDF5) restarts are not supported; write NetCDF-3 (Amber's default)")
    elif kind == "pdb":
        coords = _read_pdb(path, topology)
    elif kind == "amber-ascii":
        coords = _read_ascii(path)
    else:
        raise wrong_kind(path, kind, "coordinates")
    n = coords.positions.shape[0]
    if n_atoms is not None and n != n_atoms:
        raise InputError(f"{path}: holds {n} atoms but the topology has {n_atoms}: the files do not belong together")
    require_finite(coords.positions, f"{path}: positions", topology)
    if coords.velocities is not None:
        require_finite(coords.velocities, f"{path}: velocities", topology)
    if coords.box is not None and not np.all(np.isfinite(coords.box)):
        raise InputError(f"{path}: the box contains NaN or Inf")
    return coords


def _read_pdb(path: str, topology: Topology | None) -> Coordinates:
    pdb = read_pdb_atoms(path)
    box = None if pdb.cell is None else box_from_lengths_angles(*pdb.cell)
    if topology is not None and len(pdb.names) == topology.n_atoms:
        # Atoms are matched by order, as OpenMM's users do with PDB positions; another order (tleap
        # reorders atoms to its templates) would be silently wrong. Elements show it; names do not
        # (OpenMM writes PDB names, HH31 becomes H1), nor do residue names (HIE becomes HIS).
        elements = np.asarray(topology.elements)
        clash = np.flatnonzero((pdb.elements > 0) & (elements > 0) & (pdb.elements != elements))
        if len(clash):
            i = int(clash[0])
            raise InputError(f"{path}: atom {i} of the PDB ({pdb.names[i]}, {pdb.residue_names[i]}) is element "
                             f"{int(pdb.elements[i])} but the topology's {topology.describe_atom(i)} is element "
                             f"{int(elements[i])} ({len(clash)} such atoms): the PDB lists the atoms in another order "
                             "than the prmtop; write the PDB from the same system (e.g. tleap's savepdb)")
    return Coordinates(pdb.positions, None, box)


def _read_ascii(path: str) -> Coordinates:
    with open(path, "r", encoding="ascii", errors="replace") as fh:
        lines = fh.read().splitlines()
    if len(lines) < 2:
        raise InputError(f"{path}: too short for an Amber coordinate file (title and atom-count lines missing)")
    head = lines[1].split()
    try:
        n = int(head[0])
    except (IndexError, ValueError):
        raise InputError(f"{path}: line 2 must start with the atom count, got {lines[1]!r}; coordinates must be "
                         f"{COORDINATE_KINDS}") from None
    values = []
    for line in lines[2:]:
        line = line.rstrip()
        for start in range(0, len(line), 12):
            field = line[start:start + 12]
            if field.strip():
                try:
                    values.append(float(field))
                except ValueError:
                    raise InputError(f"{path}: {field.strip()!r} is not a number (Amber ASCII coordinates are "
                                     f"12-column fields); coordinates must be {COORDINATE_KINDS}") from None
    values = np.asarray(values, dtype=np.float64)
    n3 = 3 * n
    if len(values) == n3:
        pos, vel, box = values, None, None
    elif len(values) in (n3 + 3, n3 + 6):
        pos, vel, box = values[:n3], None, values[n3:]
    elif len(values) == 2 * n3:
        pos, vel, box = values[:n3], values[n3:], None
    elif len(values) in (2 * n3 + 3, 2 * n3 + 6):
        pos, vel, box = values[:n3], values[n3:2 * n3], values[2 * n3:]
    else:
        raise InputError(
            f"{path}: found {len(values)} numbers for {n} atoms; expected {n3} (positions), "
            f"{2 * n3} (with velocities), plus 3 or 6 for a box: the file is truncated or has the wrong atom count"
        )
    positions = pos.reshape(n, 3) * ANGSTROM
    velocities = None if vel is None else vel.reshape(n, 3) * ANGSTROM * AMBER_VELOCITY_SCALE
    if box is not None:
        angles = box[3:6] if len(box) == 6 else (90.0, 90.0, 90.0)
        box = box_from_lengths_angles(box[:3] * ANGSTROM, angles)
    return Coordinates(positions, velocities, box)


def _read_netcdf(path: str) -> Coordinates:
    try:
        nc = netcdf_file(path, "r", mmap=False)
    except Exception as exc:  # scipy raises TypeError/ValueError for corrupt headers
        raise InputError(f"{path}: not a readable NetCDF-3 file ({exc})") from exc
    with nc:
        if "coordinates" not in nc.variables:
            raise InputError(f"{path}: NetCDF file has no 'coordinates' variable: not an Amber restart")
        xyz = np.array(nc.variables["coordinates"][:], dtype=np.float64)
        if xyz.ndim == 3:  # a trajectory: take the last frame
            xyz = xyz[-1]
        positions = xyz * ANGSTROM
        velocities = None
        if "velocities" in nc.variables:
            var = nc.variables["velocities"]
            scale = float(getattr(var, "scale_factor", AMBER_VELOCITY_SCALE))
            v = np.array(var[:], dtype=np.float64)
            velocities = (v[-1] if v.ndim == 3 else v) * scale * ANGSTROM
        box = None
        if "cell_lengths" in nc.variables:
            lengths = np.array(nc.variables["cell_lengths"][:], dtype=np.float64).reshape(-1, 3)[-1]
            angles = np.array(nc.variables["cell_angles"][:], dtype=np.float64).reshape(-1, 3)[-1]
            box = box_from_lengths_angles(lengths * ANGSTROM, angles)
    return Coordinates(positions, velocities, box)
