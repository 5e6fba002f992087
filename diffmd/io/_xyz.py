"""Extended XYZ (the ASE dialect) for training data: positions, energies, forces, cell.

Units on disk are ASE's, because ASE's readers and the ML potentials trained from ASE
data (MACE, NequIP/Allegro, SchNetPack) assume them without asking: positions and the
``Lattice`` in Angstrom, ``energy`` in eV, forces in eV/Angstrom. diffmd's units (nm,
kJ/mol, kJ/mol/nm) are converted here, on the way out and on the way back in, and
nowhere else (1 eV = 96.48533212 kJ/mol).

Each frame is ``N``, a comment line of ``key=value`` pairs, and N atom lines::

    3
    Lattice="a_x a_y a_z b_x b_y b_z c_x c_y c_z" Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc="T T T" step=100
    O  0.00000000 0.00000000 0.11926200  0.00000000 0.00000000 -0.12345678
    ...

Non-periodic frames carry ``pbc="F F F"`` and no ``Lattice``. Writing is plain numpy;
reading files written elsewhere goes through ``ase.io`` (imported on use).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from ..system import NUMBER_BY_SYMBOL, SYMBOL_BY_NUMBER
from ..kernels.constants import ANGSTROM, EV
from ..kernels.errors import InputError

_STEP = re.compile(r"(?:^|\s)step=(-?\d+)")


@dataclasses.dataclass(frozen=True)
class XYZFrame:
    """One frame of an extended XYZ file, in diffmd units.

    Attributes:
        symbols: (N,) element symbols.
        elements: (N,) atomic numbers (0 for unknown symbols such as ``X``).
        positions: (N, 3) [nm].
        box: (3, 3) cell vectors as rows [nm] as stored (not reduced), or None without a cell.
        pbc: (3,) periodic flags.
        energy: potential energy [kJ/mol], or None.
        forces: (N, 3) [kJ/mol/nm], or None.
        info: the remaining comment-line keys (``step``, ``time_ps``, ...).
    """

    symbols: tuple
    elements: np.ndarray
    positions: np.ndarray
    box: np.ndarray | None
    pbc: np.ndarray
    energy: float | None
    forces: np.ndarray | None
    info: dict


def format_extxyz(symbols, positions_nm, box=None, *, energy=None, forces=None, info=None) -> str:
    """One extended XYZ frame as text (ASE units: Angstrom, eV, eV/Angstrom).

    Args:
        symbols: (N,) element symbols.
        positions_nm: (N, 3) positions [nm].
        box: (3, 3) box vectors as rows [nm] for a periodic frame, or None.
        energy: potential energy [kJ/mol], or None to leave it out.
        forces: (N, 3) forces [kJ/mol/nm], or None to leave them out.
        info: extra comment-line keys with int, float or simple string values (no spaces
            or quotes), e.g. ``{"step": 100, "time_ps": 0.2}``.
    """
    symbols = [str(s) for s in symbols]
    n = len(symbols)
    xyz = np.asarray(positions_nm, dtype=np.float64) / ANGSTROM
    if xyz.shape != (n, 3):
        raise InputError(f"positions have shape {xyz.shape}, expected ({n}, 3)")
    columns = [xyz]
    properties = "species:S:1:pos:R:3"
    if forces is not None:
        f = np.asarray(forces, dtype=np.float64) / EV * ANGSTROM  # kJ/mol/nm -> eV/Angstrom
        if f.shape != (n, 3):
            raise InputError(f"forces have shape {f.shape}, expected ({n}, 3)")
        columns.append(f)
        properties += ":forces:R:3"
    keys = []
    if box is not None:
        cell = np.asarray(box, dtype=np.float64).reshape(3, 3) / ANGSTROM
        keys.append('Lattice="' + " ".join(f"{v:.10f}" for v in cell.ravel()) + '"')
    keys.append(f"Properties={properties}")
    if energy is not None:
        keys.append(f"energy={float(energy) / EV!r}")
    keys.append('pbc="T T T"' if box is not None else 'pbc="F F F"')
    for key, value in (info or {}).items():
        if isinstance(value, (bool, np.bool_)):
            text = "T" if value else "F"
        elif isinstance(value, (int, np.integer)):
            text = str(int(value))
        elif isinstance(value, (float, np.floating)):
            text = repr(float(value))
        else:
            text = str(value)
            if not text or any(c in text for c in " \t\"'=\n"):
                raise InputError(f"extended XYZ info value for {key!r} must be a number or a word, got {value!r}")
        keys.append(f"{key}={text}")
    data = np.concatenate(columns, axis=1)
    fmt = " ".join(["%.8f"] * data.shape[1])
    body = [f"{s:<2s} " + fmt % tuple(row) for s, row in zip(symbols, data)]
    return "\n".join([str(n), " ".join(keys), *body]) + "\n"


def write_extxyz(path, symbols, positions_nm, box=None, *, energy=None, forces=None, info=None,
                 append: bool = False) -> None:
    """Write (or append) one extended XYZ frame; arguments as in :func:`format_extxyz`."""
    with open(os.fspath(path), "a" if append else "w", encoding="ascii") as fh:
        fh.write(format_extxyz(symbols, positions_nm, box, energy=energy, forces=forces, info=info))


def truncate_extxyz(path, keep_through_step: int, interval: int | None = None) -> tuple[int, int | None]:
    """Cut an extended XYZ file after the last frame whose ``step`` is <= ``keep_through_step``.

    Used to continue a trajectory after a checkpoint restart. Frames without a ``step`` key
    are kept; a frame cut short by a crash is dropped. With ``interval``, the file is also cut
    at the first frame whose step is not a multiple of it (a previous run's final step, which a
    longer run does not report).

    Returns:
        ``(frames kept, step of the last frame kept or None)``.
    """
    path = os.fspath(path)
    keep_bytes, kept, last = 0, 0, None
    with open(path, "rb") as fh:
        while True:
            first = fh.readline()
            if not first.strip():
                break
            try:
                n = int(first)
            except ValueError:
                raise InputError(f"{path}: frame {kept} does not start with an atom count") from None
            comment = fh.readline()
            lines = [fh.readline() for _ in range(n)]
            if not comment.endswith(b"\n") or not all(line.endswith(b"\n") for line in lines):
                break  # incomplete frame left by a crash
            match = _STEP.search(comment.decode("ascii", "replace"))
            step = int(match.group(1)) if match else None
            if step is not None and (step > keep_through_step or (interval and step % interval)):
                break
            keep_bytes, kept, last = fh.tell(), kept + 1, step if step is not None else last
    with open(path, "r+b") as fh:
        fh.truncate(keep_bytes)
    return kept, last


def read_extxyz(path, index=":", *, energy_key: str = "energy", forces_key: str = "forces") -> list[XYZFrame]:
    """Read extended XYZ frames (from diffmd, ASE or elsewhere) in diffmd units.

    Assumes the file is in ASE units (Angstrom, eV, eV/Angstrom), as ASE and ML training
    sets write them.

    Args:
        path: the file.
        index: frames to read, in ``ase.io.read`` syntax (``":"`` all, ``"-1"`` last, ``"::10"``).
        energy_key: comment-line key of the energy (e.g. ``"REF_energy"`` in MACE data sets).
        forces_key: per-atom property holding forces (e.g. ``"REF_forces"``).

    Returns:
        A list of :class:`XYZFrame`.

    Raises:
        InputError: ASE is not installed or the file does not parse.
    """
    try:
        import ase.io
    except ImportError as exc:  # pragma: no cover - ase is a test dependency
        raise InputError("reading extended XYZ needs ASE: pip install ase") from exc
    try:
        images = ase.io.read(os.fspath(path), index=index, format="extxyz")
    except Exception as exc:
        raise InputError(f"{path}: not a readable extended XYZ file ({exc})") from exc
    if not isinstance(images, list):
        images = [images]
    frames = []
    for atoms in images:
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = results.get(energy_key, atoms.info.get(energy_key))
        forces = results.get(forces_key, atoms.arrays.get(forces_key))
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        has_cell = pbc.any() or np.any(cell != 0)
        symbols = tuple(atoms.get_chemical_symbols())
        frames.append(XYZFrame(
            symbols=symbols,
            elements=np.array([NUMBER_BY_SYMBOL.get(s.upper(), 0) for s in symbols], dtype=np.int32),
            positions=atoms.positions * ANGSTROM,
            box=cell * ANGSTROM if has_cell else None,
            pbc=pbc,
            energy=None if energy is None else float(energy) * EV,
            forces=None if forces is None else np.asarray(forces, dtype=np.float64) * EV / ANGSTROM,
            info={k: v for k, v in atoms.info.items() if k != energy_key},
        ))
    return frames


def symbols_of(elements) -> list[str]:
    """Element symbols for atomic numbers (``X`` for 0 or unknown, as ASE spells dummies)."""
    return [SYMBOL_BY_NUMBER.get(int(z), "X") for z in elements]
