"""Pair geometry: displacements under the minimum-image convention, safe norms.

Boxes are (3, 3) arrays whose rows are the box vectors a, b, c [nm] in
OpenMM's reduced form (a = (ax, 0, 0), b = (bx, by, 0), c = (cx, cy, cz) with
ax >= 2|bx|, ax >= 2|cx|, by >= 2|cy|), which covers orthorhombic and
triclinic cells. ``box=None`` means no periodicity.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .errors import InputError


def minimum_image(dr, box):
    """Wrap displacement vectors into the minimum image of a reduced triclinic box.

    Args:
        dr: (..., 3) displacement vectors [nm].
        box: (3, 3) box vectors as rows [nm], or ``None`` for no periodicity.

    Returns:
        (..., 3) wrapped displacements [nm]. Exact for distances up to half the
        smallest reduced box width, the range OpenMM allows for cutoffs.
    """
    if box is None:
        return dr
    # Subtract c, then b, then a, as OpenMM does for reduced boxes: each step
    # only touches the components the later vectors do not have.
    lead = (1,) * (dr.ndim - 1)
    for axis in (2, 1, 0):
        vector = jnp.reshape(box[axis], lead + (3,))
        dr = dr - vector * jnp.round(dr[..., axis:axis + 1] / box[axis, axis])
    return dr


def safe_norm(v, axis=-1, eps=1e-30):
    """Euclidean norm whose gradient is finite (zero) at v = 0."""
    sq = jnp.sum(v * v, axis=axis)
    safe = jnp.where(sq > eps, sq, 1.0)
    return jnp.where(sq > eps, jnp.sqrt(safe), 0.0)


def wrap_positions(positions, box):
    """Wrap positions into the primary reduced box [nm] (no-op for ``box=None``)."""
    if box is None:
        return positions
    frac = jnp.linalg.solve(box.T, positions.T).T
    return positions - jnp.floor(frac) @ box


def box_volume(box):
    """Volume of a box [nm^3] (product of the diagonal of a reduced box)."""
    return box[0, 0] * box[1, 1] * box[2, 2]


def reduce_box(box) -> np.ndarray:
    """Bring host-side box vectors into OpenMM's reduced form (rows a, b, c) [nm].

    Raises:
        InputError: if the vectors are not lower-triangular (a along x, b in xy).
    """
    box = np.array(box, dtype=np.float64)
    if box.shape == (3,):
        box = np.diag(box)
    if box.shape != (3, 3):
        raise InputError(f"box must be (3,) lengths or (3, 3) vectors [nm], got shape {box.shape}")
    if not np.all(np.isfinite(box)):
        raise InputError("box vectors contain NaN or Inf")
    if abs(box[0, 1]) > 1e-12 or abs(box[0, 2]) > 1e-12 or abs(box[1, 2]) > 1e-12:
        raise InputError(
            "box vectors must be in reduced form: a along x, b in the xy plane "
            "(a = (ax, 0, 0), b = (bx, by, 0)); rotate the cell first"
        )
    if np.any(np.diag(box) <= 0):
        raise InputError(f"box lengths must be positive, got diagonal {np.diag(box)} nm")
    # reduce c, then b, exactly as OpenMM's Vec3 reduction
    box[2] -= box[1] * round(box[2, 1] / box[1, 1])
    box[2] -= box[0] * round(box[2, 0] / box[0, 0])
    box[1] -= box[0] * round(box[1, 0] / box[0, 0])
    return box


def check_cutoff_fits(box, cutoff: float) -> None:
    """Raise if ``cutoff`` [nm] exceeds half the smallest reduced box width."""
    if box is None:
        return
    box = np.asarray(box)
    widths = np.diag(box)
    if cutoff > 0.5 * widths.min():
        raise InputError(
            f"box too small for the cutoff: cutoff {cutoff:.4g} nm exceeds half the "
            f"smallest box width ({widths.min():.4g} nm); use a cutoff <= "
            f"{0.5 * widths.min():.4g} nm or a larger box"
        )
