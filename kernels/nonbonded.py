"""Lennard-Jones and Coulomb sums with OpenMM's NonbondedForce semantics.

Pairs come from a full neighbor table (see ``neighbors.py``): row i lists the
partners of atom i, every pair appears in two rows, and each row sums only its
own atom's terms, so the total is half the table sum. Rows are processed in
chunks (``lax.map``) so that no (N, K, 3) temporary for the whole system is
materialised, which on XLA:CPU is what decides the speed.

Lennard-Jones uses Amber's exact pair coefficients:
    E_LJ = A_ab / r^12 - B_ab / r^6, with a, b the atoms' LJ types,
    A [kJ/mol nm^12], B [kJ/mol nm^6].
Coulomb with a cutoff uses OpenMM's reaction field:
    E_C = COULOMB q_i q_j (1/r + k_rf r^2 - c_rf) for r < r_c,
    k_rf = (eps - 1) / ((2 eps + 1) r_c^3), c_rf = 3 eps / ((2 eps + 1) r_c),
and no cutoff means plain 1/r. 1-4 pairs (OpenMM "exceptions") are computed
separately, unscreened and without cutoff, scaled per pair.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .constants import COULOMB
from .geometry import minimum_image

CHUNK = 256


def reaction_field_constants(cutoff: float, dielectric: float = 78.3):
    """OpenMM's reaction-field constants (k_rf [nm^-3], c_rf [nm^-1])."""
    k_rf = (dielectric - 1.0) / ((2.0 * dielectric + 1.0) * cutoff**3)
    c_rf = 3.0 * dielectric / ((2.0 * dielectric + 1.0) * cutoff)
    return k_rf, c_rf


def _pad_rows(x, n_pad, fill):
    pad = [(0, n_pad - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad, constant_values=fill)


def table_energies(positions, box, idx, charges, atom_type, lj_a, lj_b, *, cutoff=None, k_rf=0.0, c_rf=0.0,
                   accumulate=None, chunk: int = CHUNK):
    """Coulomb and LJ energies [kJ/mol] over a full neighbor table.

    Args:
        positions: (N, 3) [nm], in the compute dtype.
        box: (3, 3) [nm] or None.
        idx: (N, K) int partners padded with N (each pair in both rows).
        charges: (N,) [e].
        atom_type: (N,) int LJ type of each atom.
        lj_a, lj_b: (T, T) pair coefficients A [kJ/mol nm^12], B [kJ/mol nm^6].
        cutoff: interaction cutoff [nm] or None (no cutoff).
        k_rf, c_rf: reaction-field constants (``reaction_field_constants``);
            zero for none.
        accumulate: dtype of the sums (defaults to the positions' dtype).
        chunk: rows per chunk (static).

    Returns:
        (coulomb, lennard_jones) energies in ``accumulate`` dtype.
    """
    n_atoms, capacity = idx.shape
    dtype = positions.dtype
    accumulate = accumulate or dtype
    n_pad = -(-n_atoms // chunk) * chunk
    pos = jnp.concatenate([positions, jnp.zeros((1, 3), dtype)])
    q = jnp.concatenate([charges.astype(dtype), jnp.zeros((1,), dtype)])
    types = jnp.concatenate([atom_type, jnp.zeros((1,), atom_type.dtype)])
    rows = jnp.minimum(jnp.arange(n_pad), n_atoms).reshape(-1, chunk)
    table = _pad_rows(idx, n_pad, n_atoms).reshape(-1, chunk, capacity)
    lj_a = lj_a.astype(dtype)
    lj_b = lj_b.astype(dtype)
    cut2 = None if cutoff is None else jnp.asarray(cutoff * cutoff, dtype)

    def one_chunk(args):
        rows_i, nbr = args
        dr = minimum_image(pos[nbr] - pos[rows_i][:, None, :], box)
        r2 = jnp.sum(dr * dr, axis=-1)
        valid = (nbr < n_atoms) & (rows_i[:, None] < n_atoms)
        if cut2 is not None:
            valid = valid & (r2 < cut2)
        inv_r2 = 1.0 / jnp.where(valid, r2, 1.0)
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        ti = types[rows_i][:, None]
        tj = types[nbr]
        e_lj = jnp.where(valid, (lj_a[ti, tj] * inv_r6 - lj_b[ti, tj]) * inv_r6, 0.0)
        qq = q[rows_i][:, None] * q[nbr]
        shape = jnp.sqrt(inv_r2)
        if cut2 is not None:
            shape = shape + k_rf * r2 - c_rf
        e_c = jnp.where(valid, qq * shape, 0.0)
        return jnp.sum(e_c, dtype=accumulate), jnp.sum(e_lj, dtype=accumulate)

    e_c, e_lj = jax.lax.map(one_chunk, (rows, table))
    half = jnp.asarray(0.5, accumulate)
    return half * COULOMB * jnp.sum(e_c), half * jnp.sum(e_lj)


def pair_energies(positions, box, pairs, charges, atom_type, lj_a, lj_b, coulomb_scale, lj_scale,
                  accumulate=None):
    """Scaled 1-4 ("exception") Coulomb and LJ energies [kJ/mol], no cutoff, no screening.

    Args:
        pairs: (P, 2) int atom pairs.
        coulomb_scale: (P,) factor on q_i q_j (Amber: 1/SCEE).
        lj_scale: (P,) factor on A and B (Amber: 1/SCNB).

    Returns:
        (coulomb14, lennard_jones14).
    """
    dtype = positions.dtype
    accumulate = accumulate or dtype
    i, j = pairs[:, 0], pairs[:, 1]
    dr = minimum_image(positions[j] - positions[i], box)
    r2 = jnp.sum(dr * dr, axis=-1)
    inv_r2 = 1.0 / r2
    inv_r6 = inv_r2 * inv_r2 * inv_r2
    ti, tj = atom_type[i], atom_type[j]
    e_lj = lj_scale * (lj_a[ti, tj] * inv_r6 - lj_b[ti, tj]) * inv_r6
    e_c = COULOMB * coulomb_scale * charges[i] * charges[j] * jnp.sqrt(inv_r2)
    return jnp.sum(e_c, dtype=accumulate), jnp.sum(e_lj, dtype=accumulate)


def dispersion_correction(type_counts, lj_a, lj_b, cutoff: float, volume):
    """OpenMM's long-range LJ dispersion correction [kJ/mol] for a periodic cutoff.

    E = 8 pi N^2 (<A/4> / (9 r_c^9) - <B/4> / (3 r_c^3)) / V, where <.> averages
    over the N (N + 1) / 2 unordered atom pairs including self pairs, as OpenMM's
    NonbondedForceImpl does. Differentiable w.r.t. A, B (and the volume), so
    parameter gradients include it.

    Args:
        type_counts: (T,) number of atoms of each LJ type.
        lj_a, lj_b: (T, T) pair coefficients.
        cutoff: cutoff [nm].
        volume: box volume [nm^3].
    """
    n = jnp.sum(type_counts)
    outer = type_counts[:, None] * type_counts[None, :]

    def mean(table):
        return (jnp.sum(outer * table) + jnp.sum(type_counts * jnp.diagonal(table))) / (n * (n + 1.0))

    a_mean = mean(lj_a) / 4.0
    b_mean = mean(lj_b) / 4.0
    coefficient = 8.0 * math.pi * n * n * (a_mean / (9.0 * cutoff**9) - b_mean / (3.0 * cutoff**3))
    return coefficient / volume
