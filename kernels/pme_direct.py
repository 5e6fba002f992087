"""PME direct space and the exclusion correction [kJ/mol] (OpenMM's NonbondedForce semantics).

    E_direct   = 1/2 sum_i sum_{j in row i, r_ij < r_c} C q_i q_j erfc(alpha r_ij) / r_ij
    E_exclusion= -sum_{excluded (i, j)} C q_i q_j erf(alpha r_ij) / r_ij

with C = COULOMB [kJ mol^-1 nm e^-2]; see ``kernels.pme`` for how the parts add
up. ``pme_direct_energy`` is the stand-alone direct sum with written-out
derivatives for positions, charges, the box and alpha (a traced alpha is
allowed); the Amber model instead folds the direct sum into the Lennard-Jones
pass (``nonbonded.table_energies(..., ewald_alpha=...)``), one pass over the
table for both.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from . import tuning
from ._pme_common import SQRT_PI as _SQRT_PI
from ._pme_common import cotangent as _cotangent
from ._pme_common import dtypes as _dtypes
from ._pme_common import reduced as _reduced
from .constants import COULOMB
from .geometry import minimum_image


def _erf_over_x(x):
    """erf(x) / x, accurate near 0 and with accurate derivatives (series below x = 0.5)."""
    x2 = x * x
    # 2/sqrt(pi) sum_n (-1)^n x^(2n) / (n! (2n + 1)), Horner in x^2; 12 terms reach 1e-16 at x = 0.5
    series = jnp.zeros_like(x)
    for n in range(11, -1, -1):
        series = series * x2 + (-1.0) ** n / (math.factorial(n) * (2 * n + 1))
    series = series * (2.0 / _SQRT_PI)
    small = x < 0.5
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, series, lax.erf(safe) / safe)


def pme_exclusion_correction(positions, charges, box, excluded_pairs, alpha, *, compute_dtype=None,
                             accumulate_dtype=None):
    """E_exclusion = -sum C q_i q_j erf(alpha r) / r over excluded pairs [kJ/mol].

    Removes the reciprocal-space interaction of every excluded pair (1-2, 1-3
    and 1-4 alike), as OpenMM does. Distances use the minimum image (for whole
    molecules this is OpenMM's plain distance). erf(x)/x is evaluated by its
    series at small x, so the value and the forces keep float32 accuracy at
    bonded distances; coincident atoms give the limit 2 alpha / sqrt(pi).

    Args:
        positions: (N, 3) [nm].
        charges: (N,) [e].
        box: (3, 3) reduced box [nm].
        excluded_pairs: (P, 2) int atom pairs, each pair once; rows holding the
            value N are padding and contribute nothing.
        alpha: Ewald splitting parameter [nm^-1].
    """
    compute, acc = _dtypes(positions, compute_dtype, accumulate_dtype)
    n_atoms = positions.shape[0]
    pairs = jnp.asarray(excluded_pairs).reshape(-1, 2)
    pos = jnp.concatenate([positions.astype(compute), jnp.zeros((1, 3), compute)])
    q = jnp.concatenate([charges.astype(compute), jnp.zeros((1,), compute)])
    i, j = jnp.minimum(pairs[:, 0], n_atoms), jnp.minimum(pairs[:, 1], n_atoms)
    dr = minimum_image(pos[j] - pos[i], _reduced(box.astype(compute)))
    r2 = jnp.sum(dr * dr, axis=-1)
    r = jnp.where(r2 > 0, jnp.sqrt(jnp.where(r2 > 0, r2, 1.0)), 0.0)
    alpha = jnp.asarray(alpha, compute)
    e = q[i] * q[j] * alpha * _erf_over_x(alpha * r)
    return -COULOMB * jnp.sum(e.astype(acc))



def _direct_pass(pos, q, box, alpha, idx, cutoff, acc, need):
    """One chunked pass over the table: the energy and the derivatives named in ``need``.

    ``need`` is a tuple of bools (positions, charges, box, alpha). Returns
    (energy [acc dtype], dE/dpos (N, 3), dE/dq (N,), dE/dbox (3, 3), dE/dalpha);
    unrequested ones are None. Every pair sits in two rows and each row sums
    only its own atom's derivatives, so no scatter is needed.
    """
    n_atoms = idx.shape[0]
    dtype = pos.dtype
    # Chunks are sliced out of the table in place (padding it would copy all of it, which
    # costs as much as half the pair loop on XLA:CPU); the last chunk is shifted back to end
    # at row N and leaves the rows it shares with the previous chunk to that chunk.
    size = min(tuning.row_chunk("nonbonded"), n_atoms)
    n_chunks = -(-n_atoms // size)
    # x, y, z as separate 1-D arrays keep XLA:CPU's fusions narrow (see PERFORMANCE-NOTES)
    xs = [jnp.concatenate([pos[:, d], jnp.zeros((1,), dtype)]) for d in range(3)]
    qp = jnp.concatenate([q, jnp.zeros((1,), dtype)])
    cut2 = jnp.asarray(cutoff * cutoff, dtype)
    inv_diag = [1.0 / box[d, d] for d in range(3)]
    two_over_sqrt_pi = jnp.asarray(2.0 / _SQRT_PI, dtype)
    need_pos, need_q, need_box, need_alpha = need

    def chunk(k):
        start = jnp.minimum(k * size, n_atoms - size)
        rows_i = start + jnp.arange(size)
        own = (rows_i >= k * size).astype(dtype)  # 0 for rows the previous chunk already did
        nbr = lax.dynamic_slice_in_dim(idx, start, size, axis=0)
        d = [xs[c][nbr] - xs[c][rows_i][:, None] for c in range(3)]
        # minimum image with the integer shifts kept (they carry the box derivative)
        kc = jnp.round(d[2] * inv_diag[2])
        d = [d[0] - kc * box[2, 0], d[1] - kc * box[2, 1], d[2] - kc * box[2, 2]]
        kb = jnp.round(d[1] * inv_diag[1])
        d = [d[0] - kb * box[1, 0], d[1] - kb * box[1, 1], d[2]]
        ka = jnp.round(d[0] * inv_diag[0])
        d = [d[0] - ka * box[0, 0], d[1], d[2]]
        r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        mask = (nbr < n_atoms) & (r2 < cut2)
        inv_r = jnp.where(mask, lax.rsqrt(jnp.where(mask, r2, 1.0)), 0.0)
        ar = alpha * r2 * inv_r
        erfc = lax.erfc(ar)
        qj = qp[nbr]
        qi = qp[rows_i][:, None]
        qi_own = qi * own[:, None]
        pot = COULOMB * qj * erfc * inv_r  # masked through inv_r
        out = [0.5 * jnp.sum((qi_own[:, 0] * jnp.sum(pot, axis=1)).astype(acc))]
        if need_q:
            out.append(jnp.sum(pot, axis=1))
        if need_pos or need_box or need_alpha:
            gauss = jnp.exp(-ar * ar)
        if need_pos or need_box:
            # (dE_ij/dr) / r for E_ij = C q_i q_j erfc(alpha r) / r
            f = -COULOMB * qi * qj * (erfc + two_over_sqrt_pi * ar * gauss) * inv_r * inv_r * inv_r
        if need_pos:
            out.append(jnp.stack([-jnp.sum(f * d[c], axis=1) for c in range(3)], axis=1))
        if need_box:
            # dE/dB_ab = -1/2 sum m_a f dr_b with dr = x_j - x_i - m B
            m = (ka, kb, kc)
            fd = [f * d[c] * own[:, None] for c in range(3)]
            out.append(-0.5 * jnp.stack([jnp.stack([jnp.sum(m[a] * fd[b]) for b in range(3)]) for a in range(3)]))
        if need_alpha:
            g = jnp.where(mask, gauss, 0.0)
            out.append(-0.5 * COULOMB * two_over_sqrt_pi * jnp.sum(qi_own[:, 0] * jnp.sum(qj * g, axis=1)))
        return tuple(out)

    res = list(lax.map(chunk, jnp.arange(n_chunks)))

    def rows_of(stacked):  # (n_chunks, size, ...) -> (N, ...), the last chunk shifted back
        head = stacked[:-1].reshape((-1,) + stacked.shape[2:])[:n_atoms - size]
        return jnp.concatenate([head, stacked[-1]])

    energy = jnp.sum(res.pop(0))
    dq = rows_of(res.pop(0)) if need_q else None
    dpos = rows_of(res.pop(0)) if need_pos else None
    dbox = jnp.sum(res.pop(0), axis=0) if need_box else None
    dalpha = jnp.sum(res.pop(0)) if need_alpha else None
    return energy, dpos, dq, dbox, dalpha



@functools.cache
def _direct_with_rule(cutoff: float, acc):
    """The direct sum with written-out derivatives, for one (static) cutoff and sum dtype."""

    @jax.custom_vjp
    def energy(pos, q, box, alpha, idx):
        return _direct_pass(pos, q, box, alpha, idx, cutoff, acc, (False,) * 4)[0]

    def fwd(pos, q, box, alpha, idx):
        # symbolic zeros tell which inputs carry a perturbation, so only the derivatives a
        # caller can use are computed (a plain MD step needs positions only)
        need = (pos.perturbed, q.perturbed, box.perturbed, alpha.perturbed)
        values = [a.value for a in (pos, q, box, alpha, idx)]
        e, dpos, dq, dbox, dalpha = _direct_pass(*values, cutoff, acc, need)
        return e, (dpos, dq, dbox, dalpha, values[:4])

    def bwd(res, g):
        dpos, dq, dbox, dalpha, (pos, q, box, alpha) = res
        if isinstance(g, jax.custom_derivatives.SymbolicZero):
            return None, None, None, None, None
        return (_cotangent(dpos, g, pos), _cotangent(dq, g, q), _cotangent(dbox, g, box),
                _cotangent(dalpha, g, alpha), None)

    energy.defvjp(fwd, bwd, symbolic_zeros=True)
    return energy


def pme_direct_energy(positions, charges, box, neighbors_idx, alpha, cutoff: float, *, compute_dtype=None,
                      accumulate_dtype=None, custom_gradients: bool = True):
    """E_direct = 1/2 sum over the full table of C q_i q_j erfc(alpha r) / r, r < cutoff [kJ/mol].

    Rows are processed in chunks of ``tuning.row_chunk("nonbonded")`` with ``lax.map`` so no (N, K)
    temporaries for the whole system are built.

    Args:
        positions: (N, 3) [nm].
        charges: (N,) [e].
        box: (3, 3) reduced box [nm].
        neighbors_idx: (N, K) int full neighbor table (each pair in both rows,
            excluded pairs absent), padded with N (``Neighbors.idx``).
        alpha: Ewald splitting parameter [nm^-1] (a float or a traced scalar).
        cutoff: direct-space cutoff [nm] (static).
        compute_dtype: dtype of the pair math (defaults to the positions').
        accumulate_dtype: dtype of the energy sum (defaults to ``compute_dtype``).
        custom_gradients: write the derivatives out (fast); ``False`` uses
            plain autodiff (the reference).
    """
    compute, acc = _dtypes(positions, compute_dtype, accumulate_dtype)
    args = (positions.astype(compute), charges.astype(compute), _reduced(box.astype(compute)),
            jnp.asarray(alpha, compute), jnp.asarray(neighbors_idx, jnp.int32))
    if custom_gradients:
        return _direct_with_rule(float(cutoff), acc)(*args)
    return _direct_pass(*args, float(cutoff), acc, (False,) * 4)[0]

