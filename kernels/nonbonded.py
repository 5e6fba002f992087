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
no cutoff means plain 1/r, and with PME (``ewald_alpha``) Coulomb is Ewald's
direct space, E_C = COULOMB q_i q_j erfc(alpha r) / r for r < r_c. LJ and
Coulomb share one pass over the table (one gather of each partner's position,
charge and type). 1-4 pairs (OpenMM "exceptions") are computed
separately, unscreened and without cutoff, scaled per pair.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from . import tuning
from .constants import COULOMB
from .errors import InputError
from .geometry import minimum_image

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def reaction_field_constants(cutoff: float, dielectric: float = 78.3):
    """OpenMM's reaction-field constants (k_rf [nm^-3], c_rf [nm^-1])."""
    k_rf = (dielectric - 1.0) / ((2.0 * dielectric + 1.0) * cutoff**3)
    c_rf = 3.0 * dielectric / ((2.0 * dielectric + 1.0) * cutoff)
    return k_rf, c_rf


def _pad_rows(x, n_pad, fill):
    pad = [(0, n_pad - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad, constant_values=fill)


@dataclasses.dataclass(frozen=True)
class _TableSettings:
    cutoff: float | None
    k_rf: float
    c_rf: float
    accumulate: object
    chunk: int
    coulomb: bool = True
    dense: bool = False
    ewald_alpha: float | None = None


def _settings(positions, cutoff, k_rf, c_rf, accumulate, chunk, coulomb, dense, ewald_alpha):
    if ewald_alpha is not None and (cutoff is None or dense):
        raise InputError("ewald_alpha (PME direct space) needs a cutoff and a neighbor table (dense=False)")
    if ewald_alpha is not None and (k_rf or c_rf):
        raise InputError("choose either the reaction field (k_rf, c_rf) or Ewald direct space (ewald_alpha), not both")
    chunk = tuning.row_chunk("nonbonded") if chunk is None else int(chunk)
    return _TableSettings(None if cutoff is None else float(cutoff), float(k_rf), float(c_rf),
                          accumulate or positions.dtype, chunk, bool(coulomb), bool(dense),
                          None if ewald_alpha is None else float(ewald_alpha))


def table_energies(positions, box, idx, charges, atom_type, lj_a, lj_b, *, cutoff=None, k_rf=0.0, c_rf=0.0,
                   accumulate=None, chunk: int | None = None, coulomb: bool = True, dense: bool = False,
                   ewald_alpha: float | None = None):
    """Coulomb and LJ energies [kJ/mol] over a full neighbor table, or over all pairs, in one pass.

    Args:
        positions: (N, 3) [nm], in the compute dtype.
        box: (3, 3) [nm] reduced box (rows a, b, c; the upper triangle is
            ignored by the fast path) or None.
        idx: (N, K) int partners padded with N (each pair in both rows); with
            ``dense=True`` instead the (N, E) excluded partners padded with N, and
            every other pair interacts (no cutoff: contiguous rows, no gathers).
        charges: (N,) [e].
        atom_type: (N,) int LJ type of each atom.
        lj_a, lj_b: (T, T) pair coefficients A [kJ/mol nm^12], B [kJ/mol nm^6].
        cutoff: interaction cutoff [nm] or None (no cutoff).
        k_rf, c_rf: reaction-field constants (``reaction_field_constants``);
            zero for none.
        accumulate: dtype of the sums (defaults to the positions' dtype).
        chunk: rows per chunk (static); None takes ``tuning.row_chunk("nonbonded")``.
        coulomb: False leaves Coulomb out (returned as 0).
        dense: all-pairs mode (see ``idx``).
        ewald_alpha: Ewald splitting parameter [nm^-1] (static): Coulomb is then
            PME's direct space, C q_i q_j erfc(alpha r) / r for r < cutoff, computed
            in the same pass as LJ (``kernels.pme`` supplies the other PME parts).

    Returns:
        (coulomb, lennard_jones) energies in ``accumulate`` dtype.

    The position derivative is written out (each row sums its own atom's
    gradient, no scatter-adds, which XLA:CPU runs serially); derivatives with
    respect to the box, charges and LJ tables come from autodiff of the plain
    formulation ``table_energies_reference``, which XLA removes under ``jit``
    when they are not asked for.

    Raises:
        InputError: ``ewald_alpha`` without a cutoff table, or together with a reaction field.
    """
    settings = _settings(positions, cutoff, k_rf, c_rf, accumulate, chunk, coulomb, dense, ewald_alpha)
    return _table(settings, positions, box, idx, charges, atom_type, lj_a, lj_b)


def table_energies_reference(positions, box, idx, charges, atom_type, lj_a, lj_b, *, cutoff=None, k_rf=0.0,
                             c_rf=0.0, accumulate=None, chunk: int | None = None, coulomb: bool = True,
                             dense: bool = False, ewald_alpha: float | None = None):
    """Plain-jnp twin of ``table_energies`` (every derivative by autodiff); the test oracle."""
    settings = _settings(positions, cutoff, k_rf, c_rf, accumulate, chunk, coulomb, dense, ewald_alpha)
    return _reference(settings, positions, box, idx, charges, atom_type, lj_a, lj_b)


def _chunks(settings, positions, idx):
    n_atoms, capacity = idx.shape
    n_pad = -(-n_atoms // settings.chunk) * settings.chunk
    rows = jnp.minimum(jnp.arange(n_pad), n_atoms).reshape(-1, settings.chunk)
    table = _pad_rows(idx, n_pad, n_atoms).reshape(-1, settings.chunk, capacity)
    return rows, table, n_pad


def _padded(positions, charges, atom_type):
    dtype = positions.dtype
    pos = jnp.concatenate([positions, jnp.zeros((1, 3), dtype)])
    q = jnp.concatenate([charges.astype(dtype), jnp.zeros((1,), dtype)])
    types = jnp.concatenate([atom_type, jnp.zeros((1,), atom_type.dtype)])
    return pos, q, types


def _partners(settings, rows_i, nbr, n_atoms):
    """Partner indices (B, K) or (1, N) and the mask of real, non-excluded pairs."""
    if not settings.dense:
        return nbr, (nbr < n_atoms) & (rows_i[:, None] < n_atoms)
    # all pairs: every row sees every atom; knock out self and the excluded partners
    everyone = jnp.arange(n_atoms)[None, :]
    b = rows_i.shape[0]
    allowed = jnp.ones((b, n_atoms + 1), bool).at[jnp.arange(b)[:, None], nbr].set(False)[:, :n_atoms]
    return everyone, allowed & (everyone != rows_i[:, None]) & (rows_i[:, None] < n_atoms)


def _reference(settings, positions, box, idx, charges, atom_type, lj_a, lj_b):
    n_atoms = idx.shape[0]
    dtype = positions.dtype
    acc = settings.accumulate
    pos, q, types = _padded(positions, charges, atom_type)
    rows, table, _ = _chunks(settings, positions, idx)
    lj_a, lj_b = jnp.asarray(lj_a, dtype), jnp.asarray(lj_b, dtype)
    cut2 = None if settings.cutoff is None else settings.cutoff**2

    def one_chunk(args):
        rows_i, nbr = args
        nbr, valid = _partners(settings, rows_i, nbr, n_atoms)
        dr = minimum_image(pos[nbr] - pos[rows_i][:, None, :], box)
        r2 = jnp.sum(dr * dr, axis=-1)
        if cut2 is not None:
            valid = valid & (r2 < cut2)
        inv_r2 = 1.0 / jnp.where(valid, r2, 1.0)
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        ti, tj = types[rows_i][:, None], types[nbr]
        e_lj = jnp.where(valid, (lj_a[ti, tj] * inv_r6 - lj_b[ti, tj]) * inv_r6, 0.0)
        shape = jnp.sqrt(inv_r2)
        if settings.ewald_alpha is not None:
            r = jnp.sqrt(jnp.where(valid, r2, 1.0))
            shape = lax.erfc(settings.ewald_alpha * r) * shape
        elif cut2 is not None:
            shape = shape + settings.k_rf * r2 - settings.c_rf
        e_c = jnp.where(valid, q[rows_i][:, None] * q[nbr] * shape, 0.0)
        if not settings.coulomb:
            e_c = jnp.zeros_like(e_c)
        return jnp.sum(e_c, dtype=acc), jnp.sum(e_lj, dtype=acc)

    e_c, e_lj = jax.lax.map(one_chunk, (rows, table))
    half = jnp.asarray(0.5, acc)
    return half * COULOMB * jnp.sum(e_c), half * jnp.sum(e_lj)


# erfc(x) exp(x^2) ~ sum_k c_k t^k with t = 1 / (1 + x / 2): least squares in relative error at 4,000
# Chebyshev nodes of t for x in [0, 4] (float64 fit against math.erfc); max relative error 1.4e-8
# in float64 and 1e-6 in float32 (lax.erfc: 7e-7), whose exp(-x^2) rounding dominates both.
_ERFC_T_COEFFS = (-0.00047276425729966695, 0.28992886338475377, 0.22557960170148292, 0.4786331416382044,
                  -0.4133604383690341, 1.0269953901895752, -0.9001534704170255, 0.3436396543023489,
                  -0.05078997071726611)
#: largest alpha * r the polynomial covers (alpha * cutoff is 2.63 at OpenMM's default tolerance 5e-4)
ERFC_FIT_RANGE = 4.0


def erfc_scaled_fit(x):
    """erfc(x) exp(x^2) for 0 <= x <= ``ERFC_FIT_RANGE`` by a degree-8 polynomial in 1 / (1 + x / 2).

    One division and eight multiply-adds; multiplied by the exp(-x^2) that the
    force needs anyway it gives erfc without a second transcendental.
    """
    t = 1.0 / (1.0 + 0.5 * x)
    acc = jnp.full_like(x, _ERFC_T_COEFFS[-1])
    for c in _ERFC_T_COEFFS[-2::-1]:
        acc = acc * t + c
    return acc


def _ewald_shape(r2, inv_r, alpha, fast_erfc):
    """erfc(alpha r) / r and its -(1/r) d/dr, (erfc + 2/sqrt(pi) alpha r exp(-alpha^2 r^2)) / r^3."""
    ar = alpha * r2 * inv_r
    gauss = jnp.exp(-ar * ar)
    erfc = gauss * erfc_scaled_fit(ar) if fast_erfc else lax.erfc(ar)
    return erfc * inv_r, (erfc + _TWO_OVER_SQRT_PI * ar * gauss) * inv_r * inv_r * inv_r


def _fast(settings, positions, box, idx, charges, atom_type, lj_a, lj_b):
    """Energies and their position gradients in one pass, x/y/z kept as separate 1-D arrays.

    Chunks are sliced out of the table in place (padding the table to a multiple
    of the chunk would copy all of it, as costly as a good part of the pass on
    XLA:CPU); the last chunk is shifted back to end at row N and leaves the rows
    it shares with the previous chunk to that chunk (``own``).
    """
    n_atoms = idx.shape[0]
    dtype = positions.dtype
    acc = settings.accumulate
    size = min(settings.chunk, n_atoms)
    n_chunks = -(-n_atoms // size)
    pos, q, types = _padded(positions, charges, atom_type)
    xs = (pos[:, 0], pos[:, 1], pos[:, 2])
    n_types = lj_a.shape[0]
    a_flat, b_flat = jnp.asarray(lj_a, dtype).reshape(-1), jnp.asarray(lj_b, dtype).reshape(-1)
    cut2 = None if settings.cutoff is None else settings.cutoff**2
    if box is not None:
        inv_diag = [1.0 / box[d, d] for d in range(3)]

    def one_chunk(k):
        start = jnp.minimum(k * size, n_atoms - size)
        rows_i = start + jnp.arange(size)
        own = rows_i >= k * size
        nbr = lax.dynamic_slice_in_dim(idx, start, size, axis=0)
        nbr, valid = _partners(settings, rows_i, nbr, n_atoms)
        d = [c[nbr] - c[rows_i][:, None] for c in xs]
        if box is not None:
            for axis in (2, 1, 0):  # minimum image for reduced boxes, as geometry.minimum_image
                shift = jnp.round(d[axis] * inv_diag[axis])
                # every component: a strain derivative (stress) needs d/d(box) of the upper triangle too
                d = [d[c] - shift * box[axis, c] for c in range(3)]
        r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        if cut2 is not None:
            valid = valid & (r2 < cut2)
        inv_r2 = jnp.where(valid, 1.0 / jnp.where(valid, r2, 1.0), 0.0)
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        pair = types[rows_i][:, None] * n_types + types[nbr]
        a, b = a_flat[pair], b_flat[pair]
        e_lj = (a * inv_r6 - b) * inv_r6
        g_lj = (12.0 * a * inv_r6 - 6.0 * b) * inv_r6 * inv_r2  # -(1/r) dE/dr
        grad_lj = jnp.stack([jnp.sum(g_lj * dk, axis=1) for dk in d], axis=-1)
        e_lj = jnp.where(own, jnp.sum(e_lj, axis=1, dtype=acc), 0.0)
        if not settings.coulomb:
            return jnp.zeros((), acc), jnp.sum(e_lj), jnp.zeros_like(grad_lj), grad_lj
        inv_r = jnp.sqrt(inv_r2)  # 0 for invalid pairs, which zeroes every Coulomb term below
        qq = q[rows_i][:, None] * q[nbr]
        if settings.ewald_alpha is not None:
            # float32 pair math: the fitted erfc (as accurate as lax.erfc there, one exp instead of two);
            # float64 keeps lax.erfc, whose 1e-16 the parity tests hold it to
            fast_erfc = dtype == jnp.float32 and settings.ewald_alpha * settings.cutoff <= ERFC_FIT_RANGE
            shape, g_shape = _ewald_shape(r2, inv_r, settings.ewald_alpha, fast_erfc)
            e_c, g_c = qq * shape, qq * g_shape
        elif cut2 is not None:
            e_c = jnp.where(valid, qq * (inv_r + settings.k_rf * r2 - settings.c_rf), 0.0)
            g_c = jnp.where(valid, qq * (inv_r * inv_r2 - 2.0 * settings.k_rf), 0.0)
        else:
            e_c = qq * inv_r
            g_c = qq * inv_r * inv_r2
        # dE/dr_i = sum_j g_ij (r_j - r_i): each row sums its own atom's gradient
        grad_c = jnp.stack([jnp.sum(g_c * dk, axis=1) for dk in d], axis=-1)
        e_c = jnp.where(own, jnp.sum(e_c, axis=1, dtype=acc), 0.0)
        return jnp.sum(e_c), jnp.sum(e_lj), grad_c, grad_lj

    e_c, e_lj, grad_c, grad_lj = lax.map(one_chunk, jnp.arange(n_chunks))

    def rows_of(stacked):  # (n_chunks, size, 3) -> (N, 3), the last chunk shifted back
        head = stacked[:-1].reshape(-1, 3)[:n_atoms - size]
        return jnp.concatenate([head, stacked[-1]])

    half = jnp.asarray(0.5, acc)
    return half * COULOMB * jnp.sum(e_c), half * jnp.sum(e_lj), COULOMB * rows_of(grad_c), rows_of(grad_lj)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _table(settings, positions, box, idx, charges, atom_type, lj_a, lj_b):
    e_c, e_lj, _, _ = _fast(settings, positions, box, idx, charges, atom_type, lj_a, lj_b)
    return e_c, e_lj


def _table_fwd(settings, positions, box, idx, charges, atom_type, lj_a, lj_b):
    e_c, e_lj, grad_c, grad_lj = _fast(settings, positions, box, idx, charges, atom_type, lj_a, lj_b)
    return (e_c, e_lj), (positions, box, idx, charges, atom_type, lj_a, lj_b, grad_c, grad_lj)


def _table_bwd(settings, residuals, cotangent):
    positions, box, idx, charges, atom_type, lj_a, lj_b, grad_c, grad_lj = residuals
    ct_c, ct_lj = cotangent
    dtype = positions.dtype
    ct_pos = (ct_c.astype(dtype) * grad_c + ct_lj.astype(dtype) * grad_lj).astype(dtype)

    def others(box_, charges_, lj_a_, lj_b_):
        return _reference(settings, positions, box_, idx, charges_, atom_type, lj_a_, lj_b_)

    _, vjp = jax.vjp(others, box, charges, lj_a, lj_b)
    ct_box, ct_q, ct_a, ct_b = vjp((ct_c, ct_lj))
    return ct_pos, ct_box, None, ct_q, None, ct_a, ct_b


_table.defvjp(_table_fwd, _table_bwd)


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
