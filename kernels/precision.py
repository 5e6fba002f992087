"""Precision policies, resolved in one place into a compute and an accumulate dtype.

- ``double``: float64 everywhere (the reference; tests use it).
- ``mixed``: float32 pair math and forces, float64 accumulation of energies and
  positions (the production default on GPUs).
- ``single``: float32 everywhere.

Policies that need float64 (double and mixed) require ``jax_enable_x64``; diffmd
never switches it on by itself (that would change every other JAX program in the
process), it raises instead: when an energy model is built (before any tracing)
and again when one built with x64 on is traced with x64 off, so a float64 policy
never runs silently in float32. The message gives the two fixes:
``jax.config.update("jax_enable_x64", True)`` or ``precision="single"``.
Defaults: ``System.energy_fn`` uses ``double`` (the reference), ``simulate`` and
ensembles ``mixed``; ``single`` is the one policy that works without x64.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError

PrecisionName = Literal["double", "mixed", "single"]
PRECISIONS = ("double", "mixed", "single")


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision policy.

    Attributes:
        name: ``"double"``, ``"mixed"`` or ``"single"``.
        compute: dtype of pair geometry and forces.
        accumulate: dtype of energy sums and positions.
    """

    name: str
    compute: np.dtype
    accumulate: np.dtype


def resolve_precision(precision: "str | Precision") -> Precision:
    """Turn a policy name into dtypes, checking that JAX can honour it.

    Raises:
        InputError: unknown name, or a float64 policy while ``jax_enable_x64`` is off.
    """
    if isinstance(precision, Precision):
        return precision
    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    compute = f64 if precision == "double" else f32
    accumulate = f32 if precision == "single" else f64
    resolved = Precision(precision, compute, accumulate)
    check_x64(resolved)
    return resolved


def check_x64(precision: Precision, built: bool = False) -> None:
    """Raise if ``precision`` needs float64 and ``jax_enable_x64`` is off (in this context).

    Args:
        precision: the policy.
        built: the energy model was already built (with x64 on) and is now being traced
            without it; changes only the message.

    Raises:
        InputError: naming the policy and the exact fix.
    """
    if np.float64 not in (precision.compute, precision.accumulate) or jax.config.read("jax_enable_x64"):
        return
    if built:
        raise InputError(
            f"this energy model was built for precision={precision.name!r} (float64), but jax_enable_x64 is off "
            "now (switched off after it was built, e.g. inside jax.enable_x64(False)), so it would run in float32: "
            'keep x64 on (jax.config.update("jax_enable_x64", True)), or build the model with precision="single"'
        )
    raise InputError(
        f"precision={precision.name!r} needs float64, but jax_enable_x64 is off: call "
        'jax.config.update("jax_enable_x64", True) at start-up (or set JAX_ENABLE_X64=1), or pass '
        'precision="single" (float32 throughout, needs no x64)'
    )


def cast_floats(tree, dtype):
    """Cast every floating-point leaf of a pytree to ``dtype`` (integers untouched)."""

    def cast(x):
        x = jnp.asarray(x) if not isinstance(x, np.ndarray) else x
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)
