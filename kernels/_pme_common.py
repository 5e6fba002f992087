"""Small pieces shared by the PME modules (``pme``, ``pme_direct``, ``pme_reciprocal``).

Boxes are (3, 3) arrays of rows a, b, c [nm] in OpenMM's reduced
(lower-triangular) form.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

#: Order of the B-splines (OpenMM's NonbondedForce always uses 5).
PME_ORDER = 5
SQRT_PI = math.sqrt(math.pi)


def reduced(box):
    """The lower triangle of a reduced box (the upper entries are structurally zero)."""
    return jnp.tril(box)


def recip_box(box):
    """Reciprocal box R with s = x R, lower-triangular like OpenMM's ``invertBoxVectors``."""
    ax, bx, by, cx, cy, cz = box[0, 0], box[1, 0], box[1, 1], box[2, 0], box[2, 1], box[2, 2]
    zero = jnp.zeros_like(ax)
    return jnp.stack([
        jnp.stack([1.0 / ax, zero, zero]),
        jnp.stack([-bx / (ax * by), 1.0 / by, zero]),
        jnp.stack([(bx * cy - by * cx) / (ax * by * cz), -cy / (by * cz), 1.0 / cz]),
    ])



def dtypes(positions, compute_dtype, accumulate_dtype):
    compute = jnp.dtype(compute_dtype or positions.dtype)
    return compute, jnp.dtype(accumulate_dtype or compute)



def cotangent(value, g, like):
    """g * value cast to the primal's dtype (None stays None: a zero cotangent)."""
    return None if value is None else (value * g).astype(like.dtype)


