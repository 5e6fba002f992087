"""Per-backend tuning constants of the kernels, in one place.

Row chunking is what decides the speed of a pass over an (N, K) neighbor table
on XLA:CPU: each ``lax.map`` step works on ``chunk`` rows, so its temporaries
(a few (chunk, K) arrays) stay in cache instead of streaming (N, K) arrays
through memory (``shared/PERFORMANCE-NOTES.md``: 7-8x on a 2-core CPU). On a
GPU the balance is the other way round: every chunk is a sequential kernel
launch, so few large chunks fill the device better. The GPU values are
estimates until measured on one; the CPU values were measured (DHFR, 23,558
atoms, 2 cores).

``DIFFMD_CHUNK_<KIND>`` (for example ``DIFFMD_CHUNK_NONBONDED=512``) overrides a
value for experiments; the setting is read when a kernel is traced, so a
change needs a fresh ``jit``.
"""

from __future__ import annotations

import os

import jax

from .errors import InputError

#: rows per ``lax.map`` step, per kernel kind and backend family
_ROW_CHUNKS = {
    "cpu": {"nonbonded": 256, "gb": 128},
    "gpu": {"nonbonded": 8192, "gb": 4096},
}


def backend_family(backend: str | None = None) -> str:
    """``"cpu"`` for XLA:CPU, ``"gpu"`` for every accelerator (CUDA, ROCm, TPU)."""
    name = backend or jax.default_backend()
    return "cpu" if name == "cpu" else "gpu"


def row_chunk(kind: str, backend: str | None = None) -> int:
    """Rows of a neighbor table per ``lax.map`` step for kernel ``kind`` (``"nonbonded"``, ``"gb"``).

    Args:
        kind: which kernel asks.
        backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
        A positive int; ``DIFFMD_CHUNK_<KIND>`` overrides the table.
    """
    override = os.environ.get(f"DIFFMD_CHUNK_{kind.upper()}")
    if override:
        value = int(override) if override.strip().isdigit() else 0
        if value <= 0:
            raise InputError(f"DIFFMD_CHUNK_{kind.upper()} must be a positive number of rows, got {override!r}")
        return value
    return _ROW_CHUNKS[backend_family(backend)][kind]
