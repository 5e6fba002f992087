"""DCD trajectories (the CHARMM binary format that NAMD, OpenMM, MDTraj, MDAnalysis and VMD read).

Layout (little-endian Fortran unformatted records, each framed by its byte length as int32):

* header record, 84 bytes: ``b"CORD"`` then 20 int32 control words: [0] number of frames,
  [1] step of the first frame, [2] steps between frames, [3] step of the last frame,
  [8] number of fixed atoms (0), [9] time step as float32 in AKMA units (0.04888821 ps),
  [10] 1 if frames carry a unit cell, [19] CHARMM version (24);
* title record: int32 count then 80-character lines;
* atom-count record: int32 N;
* per frame: optional unit-cell record of 6 float64 ``[|a|, cos(gamma), |b|, cos(beta),
  cos(alpha), |c|]`` (Angstrom; cosines as CHARMM and NAMD >= 2.5 write them), then three
  records of N float32: x, y, z [Angstrom].

The writer appends a frame, flushes it, and only then raises the header's frame count, so the
header never claims a frame that is not fully on disk; reopening trusts the header and cuts off
any partial frame a crash left behind.

Frames are evenly spaced, except that the last one may be a run's final step between two
spacings (a run of 100 steps saved every 30 ends with frames at 90 and 100): control word [3]
then holds that step, so readers of the header see where the file really ends.
"""

from __future__ import annotations

import os
import struct
import time

import numpy as np

from ..kernels.constants import ANGSTROM
from ..kernels.errors import InputError
from ._pdb import box_lengths_angles

#: CHARMM's AKMA time unit [ps].
AKMA_PS = 0.04888821
_N_TITLE = 2
_TITLE_BYTES = 4 + 80 * _N_TITLE


def _header_bytes(n_atoms: int, dt_ps: float, first_step: int, interval: int, periodic: bool, title: str) -> bytes:
    control = [0] * 20
    control[1], control[2], control[3] = first_step, interval, first_step
    control[10], control[19] = int(periodic), 24
    words = struct.pack("<9i", *control[:9]) + struct.pack("<f", dt_ps / AKMA_PS) + struct.pack("<10i", *control[10:])
    titles = [title, "Created " + time.strftime("%Y-%m-%d %H:%M:%S")]
    text = b"".join(t.encode("ascii", "replace")[:80].ljust(80) for t in titles)
    return (
        struct.pack("<i", 84) + b"CORD" + words + struct.pack("<i", 84)
        + struct.pack("<ii", _TITLE_BYTES, _N_TITLE) + text + struct.pack("<i", _TITLE_BYTES)
        + struct.pack("<iii", 4, n_atoms, 4)
    )


def _read_header(fh, path):
    """Parse the header of an open DCD file: a dict of its fields and the header size [bytes]."""
    fh.seek(0)
    head = fh.read(92)
    if len(head) < 92 or head[4:8] != b"CORD":
        raise InputError(f"{path}: not a DCD file (no CORD header record)")
    if struct.unpack("<i", head[:4])[0] != 84:
        raise InputError(f"{path}: DCD header is not little-endian CHARMM format; "
                         "diffmd appends only to its own layout")
    control = struct.unpack("<9i", head[8:44]) + struct.unpack("<f", head[44:48]) + struct.unpack("<10i", head[48:88])
    (title_len,) = struct.unpack("<i", fh.read(4))
    fh.seek(title_len + 4, os.SEEK_CUR)
    marker, n_atoms, _ = struct.unpack("<iii", fh.read(12))
    if marker != 4 or control[8] != 0:
        raise InputError(f"{path}: unsupported DCD variant (fixed atoms or malformed atom-count record)")
    info = dict(
        n_frames=control[0], first_step=control[1], interval=control[2], dt_ps=control[9] * AKMA_PS,
        periodic=bool(control[10]), n_atoms=n_atoms, last_step=control[3],
    )
    return info, fh.tell()


def _frame_bytes(n_atoms: int, periodic: bool) -> int:
    return (56 if periodic else 0) + 3 * (8 + 4 * n_atoms)


class DCDWriter:
    """Append-only DCD writer with a header that always matches the frames on disk.

    Args:
        path: file to create (replaced if it exists).
        n_atoms: atoms per frame.
        dt_ps: integration time step [ps] (stored in AKMA units).
        first_step: step of the first frame.
        interval: steps between frames.
        periodic: whether every frame carries a unit cell.
        title: first title line.

    Example:
        >>> with DCDWriter("traj.dcd", n_atoms=3, dt_ps=0.002) as dcd:  # doctest: +SKIP
        ...     dcd.write_frame(positions_nm)
    """

    def __init__(self, path, n_atoms: int, *, dt_ps: float = 0.001, first_step: int = 0, interval: int = 1,
                 periodic: bool = False, title: str = "Created by diffmd"):
        self.path = os.fspath(path)
        if n_atoms <= 0 or interval <= 0 or dt_ps <= 0:
            raise InputError(f"DCD needs n_atoms > 0, interval > 0 and dt_ps > 0; got {n_atoms}, {interval}, {dt_ps}")
        self.n_atoms, self.first_step, self.interval = int(n_atoms), int(first_step), int(interval)
        self.dt_ps, self.periodic, self.n_frames = float(dt_ps), bool(periodic), 0
        self.last_step = None
        header = _header_bytes(self.n_atoms, self.dt_ps, self.first_step, self.interval, self.periodic, title)
        self._header_size = len(header)
        self._file = open(self.path, "w+b")
        self._file.write(header)
        self._file.flush()

    @classmethod
    def reopen(cls, path, n_atoms: int, *, keep_frames: int | None = None) -> "DCDWriter":
        """Open an existing DCD file to append frames (after a checkpoint restart).

        Args:
            path: a DCD file in this writer's layout.
            n_atoms: expected atoms per frame (checked).
            keep_frames: keep only the first ``keep_frames`` frames (those up to the restored
                checkpoint) and cut the rest; None keeps every frame the header counts.
                Bytes past the counted frames (a frame cut short by a crash) are always cut.

        Raises:
            InputError: not a DCD file, a different atom count, or ``keep_frames`` larger than
                the frames present.
        """
        self = cls.__new__(cls)
        self.path = os.fspath(path)
        self._file = open(self.path, "r+b")
        try:
            info, self._header_size = _read_header(self._file, self.path)
            if info["n_atoms"] != n_atoms:
                raise InputError(f"{self.path}: DCD has {info['n_atoms']} atoms per frame, the system has {n_atoms}")
            self.n_atoms, self.first_step, self.interval = info["n_atoms"], info["first_step"], info["interval"]
            self.dt_ps, self.periodic = info["dt_ps"], info["periodic"]
            self.n_frames = info["n_frames"]
            self.last_step = info["last_step"] if self.n_frames else None
            size = os.fstat(self._file.fileno()).st_size
            on_disk = (size - self._header_size) // _frame_bytes(self.n_atoms, self.periodic)
            n = min(info["n_frames"], on_disk)
            if keep_frames is not None:
                if keep_frames > n:
                    raise InputError(f"{self.path}: asked to keep {keep_frames} frames but only {n} are complete")
                n = max(int(keep_frames), 0)
            self.truncate(n)
        except BaseException:
            self._file.close()
            raise
        return self

    def step_of_frame(self, k: int) -> int:
        """Simulation step of frame ``k`` (0-based)."""
        return self.first_step + k * self.interval

    @property
    def ends_off_grid(self) -> bool:
        """Whether the last frame is a final step between two spacings (no frame may follow)."""
        return self.n_frames > 0 and self.last_step != self.step_of_frame(self.n_frames - 1)

    def truncate(self, n_frames: int) -> None:
        """Keep the first ``n_frames`` frames and drop the rest (header updated)."""
        self._file.truncate(self._header_size + n_frames * _frame_bytes(self.n_atoms, self.periodic))
        self._file.flush()
        if int(n_frames) != self.n_frames:
            self.last_step = self.step_of_frame(n_frames - 1) if n_frames > 0 else None
        self.n_frames = int(n_frames)
        self._write_count()

    def _write_count(self) -> None:
        fh = self._file
        fh.seek(8)
        fh.write(struct.pack("<i", self.n_frames))
        fh.seek(20)
        fh.write(struct.pack("<i", self.step_of_frame(0) if self.last_step is None else self.last_step))
        fh.flush()

    def write_frame(self, positions_nm, box=None, *, step: int | None = None) -> None:
        """Append one frame.

        Args:
            positions_nm: (N, 3) positions [nm], written as float32 Angstrom.
            box: (3, 3) box vectors as rows [nm]; required when the file is periodic,
                ignored otherwise.
            step: the frame's step: None or the next evenly spaced one
                (``step_of_frame(n_frames)``), or a run's final step before it (after the
                last frame), which ends the file.

        Raises:
            InputError: a bad shape, a step that is neither, or a frame after a final one.
        """
        xyz = np.asarray(positions_nm, dtype=np.float64)
        if xyz.shape != (self.n_atoms, 3):
            raise InputError(f"{self.path}: frame has shape {xyz.shape}, expected ({self.n_atoms}, 3)")
        expected = self.step_of_frame(self.n_frames)
        step = expected if step is None else int(step)
        if self.ends_off_grid:
            raise InputError(f"{self.path}: the file ends with the final step {self.last_step} of a run; no frame "
                             "can follow it (resume from a checkpoint to continue)")
        if step != expected and not (step < expected and (self.last_step is None or step > self.last_step)):
            raise InputError(f"{self.path}: DCD frames must be evenly spaced; expected step {expected}, got {step}")
        if step > 2**31 - 1:
            raise InputError(f"{self.path}: step {step} overflows the DCD header's "
                             "32-bit step counter; continue in a new DCD file")
        parts = []
        if self.periodic:
            if box is None:
                raise InputError(f"{self.path}: this DCD stores a unit cell per frame; pass the box vectors")
            lengths, angles = box_lengths_angles(box)
            cos = np.cos(np.radians(angles))
            cell = [lengths[0] / ANGSTROM, cos[2], lengths[1] / ANGSTROM, cos[1], cos[0], lengths[2] / ANGSTROM]
            parts.append(struct.pack("<i6di", 48, *cell, 48))
        marker = struct.pack("<i", 4 * self.n_atoms)
        coords = (xyz / ANGSTROM).astype("<f4")
        for axis in range(3):
            parts += [marker, np.ascontiguousarray(coords[:, axis]).tobytes(), marker]
        fh = self._file
        fh.seek(self._header_size + self.n_frames * _frame_bytes(self.n_atoms, self.periodic))
        fh.write(b"".join(parts))
        fh.flush()  # the frame is on disk before the header counts it
        self.n_frames += 1
        self.last_step = step
        self._write_count()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_dcd(path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a little-endian DCD file written by :class:`DCDWriter` (or CHARMM/NAMD/OpenMM).

    Returns:
        ``(positions, boxes, info)``: (F, N, 3) positions [nm]; (F, 3) cell lengths [nm] and
        (F, 3) angles [deg] stacked as (F, 6), or None without a unit cell; the header fields
        (``n_frames``, ``first_step``, ``interval``, ``dt_ps``, ``periodic``, ``n_atoms``, and
        ``last_step``, the last frame's step: a run's final step when that falls between spacings).
        Frames are counted by the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        info, header_size = _read_header(fh, path)
        n, periodic = info["n_atoms"], info["periodic"]
        fh.seek(header_size)
        data = fh.read(info["n_frames"] * _frame_bytes(n, periodic))
    if len(data) < info["n_frames"] * _frame_bytes(n, periodic):
        raise InputError(f"{path}: DCD header counts {info['n_frames']} frames but the file is shorter")
    offset = 56 if periodic else 0
    record = np.dtype([("head", "<i4"), ("x", "<f4", n), ("tail", "<i4")])
    positions = np.empty((info["n_frames"], n, 3))
    cells = np.empty((info["n_frames"], 6)) if periodic else None
    step = _frame_bytes(n, periodic)
    for f in range(info["n_frames"]):
        base = f * step
        if periodic:
            a, cg, b, cb, ca, c = struct.unpack("<6d", data[base + 4 : base + 52])
            cells[f] = [a * ANGSTROM, b * ANGSTROM, c * ANGSTROM, *np.degrees(np.arccos([ca, cb, cg]))]
        xyz = np.frombuffer(data, dtype=record, count=3, offset=base + offset)
        positions[f] = xyz["x"].T.astype(np.float64) * ANGSTROM
    return positions, cells, info
