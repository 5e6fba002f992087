"""Smooth PME reciprocal space [kJ/mol]: B-spline spreading, FFT, influence function, interpolation.

Follows Essmann et al., J. Chem. Phys. 103, 8577 (1995) as OpenMM implements it
(see ``kernels.pme`` for the whole split): charges are spread on an
(nx, ny, nz) grid with cardinal B-splines of order 5 in fractional coordinates
s = x B^-1, S = FFT(grid), and

    E_reciprocal = 1/2 sum_{k != 0} W(k) |S(k)|^2,
    W(m) = C exp(-pi^2 |h|^2 / alpha^2) / (pi V |h|^2 b_x(m_x) b_y(m_y) b_z(m_z)),
    h = B^-1 m,

with C = COULOMB [kJ mol^-1 nm e^-2], V [nm^3] the box volume and b_d the
B-spline moduli computed exactly as OpenMM computes them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._pme_common import PME_ORDER
from ._pme_common import cotangent as _cotangent
from ._pme_common import dtypes as _dtypes
from ._pme_common import recip_box as _recip_box
from ._pme_common import reduced as _reduced
from .constants import COULOMB


@functools.lru_cache(maxsize=64)
def bspline_moduli(n: int, order: int = PME_ORDER) -> np.ndarray:
    """B-spline moduli b(k) of one axis, the factors in the denominator of W (host, float64).

    b(k) = |sum_j M_order(j + 1) exp(2 pi i k j / n)|^2 for k = 0..n-1, computed as
    OpenMM does: entries below 1e-7 (order 5 has a zero at the Nyquist index of
    an even grid) are replaced by the mean of their neighbours, in index order.
    """
    weights = np.asarray(_bspline_weights(np.zeros(()), order)[0], dtype=np.float64)
    data = np.zeros(max(n, order + 1))
    data[1:order + 1] = weights  # OpenMM's layout (any shift gives the same moduli)
    data = data[:n]
    k = np.arange(n)
    phase = 2.0 * np.pi * np.outer(k, k) / n
    moduli = (data @ np.cos(phase).T) ** 2 + (data @ np.sin(phase).T) ** 2
    for i in range(n):
        if moduli[i] < 1e-7:
            moduli[i] = 0.5 * (moduli[(i - 1) % n] + moduli[(i + 1) % n])
    moduli.setflags(write=False)
    return moduli


def _bspline_weights(f, order: int = PME_ORDER):
    """Cardinal B-spline weights w[j] = M_order(f + order - 1 - j) and dw/df, j = 0..order-1.

    Built by the recursion M_n(u) = (u M_{n-1}(u) + (n - u) M_{n-1}(u - 1)) / (n - 1)
    from M_2; the derivative is M_{n-1}(u) - M_{n-1}(u - 1). Weight j belongs to
    grid point floor(u) + j (OpenMM's forward spreading; a uniform shift of the
    grid leaves energies and forces unchanged).
    """
    w = [1.0 - f, f]
    dw = w
    for n in range(3, order + 1):
        prev = w
        lower = [prev[j - 1] if j > 0 else 0.0 for j in range(n)]
        upper = [prev[j] if j < n - 1 else 0.0 for j in range(n)]
        if n == order:
            dw = [lo - up for lo, up in zip(lower, upper)]
        w = [((f + n - 1 - j) * lower[j] + (j + 1 - f) * upper[j]) / (n - 1) for j in range(n)]
    return w, dw


def _spline_setup(pos, box, grid):
    """Reciprocal box, first grid point of each atom (N, 3) and B-spline weights/derivatives (N, 3, 5)."""
    recip = _recip_box(box)
    s = pos @ recip
    u = (s - jnp.floor(s)) * jnp.asarray(grid, pos.dtype)[None, :]
    base = jnp.floor(u)
    w, dw = _bspline_weights(u - base)
    base = base.astype(jnp.int32) % jnp.asarray(grid, jnp.int32)[None, :]
    return recip, base, jnp.stack(w, axis=-1), jnp.stack(dw, axis=-1)


# Each atom touches a 5 x 5 x 5 block starting at its base point. On a grid padded by
# PME_ORDER - 1 points per axis the block never wraps, so one windowed scatter (or gather)
# per atom replaces 125 single-element updates (about 3x faster on XLA:CPU); the padding
# is then folded back (spreading) or filled with the periodic images (interpolation).
_WINDOW = lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3), inserted_window_dims=(),
                                      scatter_dims_to_operand_dims=(0, 1, 2))
_GATHER = lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(), start_index_map=(0, 1, 2))


def _spread(base, blocks, grid):
    """Sum the (N, 5, 5, 5) blocks into the periodic (nx, ny, nz) grid."""
    pad = PME_ORDER - 1
    padded = jnp.zeros(tuple(n + pad for n in grid), blocks.dtype)
    padded = lax.scatter_add(padded, base, blocks, _WINDOW, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    for axis, n in enumerate(grid):
        head = lax.slice_in_dim(padded, 0, pad, axis=axis) + lax.slice_in_dim(padded, n, n + pad, axis=axis)
        padded = jnp.concatenate([head, lax.slice_in_dim(padded, pad, n, axis=axis)], axis=axis)
    return padded


def _interpolate(base, values):
    """The (N, 5, 5, 5) blocks of the periodic grid ``values`` that each atom touches."""
    pad = PME_ORDER - 1
    for axis in range(3):
        values = jnp.concatenate([values, lax.slice_in_dim(values, 0, pad, axis=axis)], axis=axis)
    return lax.gather(values, base, _GATHER, slice_sizes=(PME_ORDER,) * 3,
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _frequencies(n: int, index):
    """OpenMM's signed frequency of grid index k: k below (n + 1) // 2, else k - n."""
    return np.where(index < (n + 1) // 2, index, index - n)


def _influence(box, alpha, grid):
    """Symmetrised SPME weights on the rfft half grid (nx, ny, nz // 2 + 1) and their multiplicity.

    W(k) depends on the sign convention at the Nyquist index, so in a triclinic
    box W(k) != W(-k) there; averaging the two keeps 1/2 sum_full W |S|^2 (OpenMM's
    sum over the full grid) exact on the half grid, and makes W S Hermitian.
    """
    nx, ny, nz = grid
    dtype = box.dtype
    recip = _recip_box(box)
    volume = box[0, 0] * box[1, 1] * box[2, 2]
    ks = (np.arange(nx), np.arange(ny), np.arange(nz // 2 + 1))
    shapes = ((nx, 1, 1), (1, ny, 1), (1, 1, nz // 2 + 1))
    factor = (math.pi / alpha) ** 2
    total = 0.0
    for sign in (1, -1):
        idx = [(sign * k) % n for k, n in zip(ks, grid)]
        m = [jnp.asarray(_frequencies(n, i).reshape(sh), dtype) for n, i, sh in zip(grid, idx, shapes)]
        b = [jnp.asarray(bspline_moduli(n)[i].reshape(sh), dtype) for n, i, sh in zip(grid, idx, shapes)]
        hx = m[0] * recip[0, 0]
        hy = m[0] * recip[1, 0] + m[1] * recip[1, 1]
        hz = m[0] * recip[2, 0] + m[1] * recip[2, 1] + m[2] * recip[2, 2]
        h2 = hx * hx + hy * hy + hz * hz
        zero = h2 == 0  # only k = 0: its term is dropped (the neutralizing plasma replaces it)
        h2 = jnp.where(zero, 1.0, h2)
        w = COULOMB * jnp.exp(-factor * h2) / (math.pi * volume * h2 * b[0] * b[1] * b[2])
        total = total + jnp.where(zero, 0.0, w)
    kz = ks[2]
    mult = np.where((kz == 0) | (2 * kz == nz), 1.0, 2.0).reshape(shapes[2])
    return 0.5 * total, jnp.asarray(mult, dtype)


def _structure_factor(pos, q, box, grid):
    """rfftn of the B-spline-spread charge grid, (nx, ny, nz // 2 + 1) complex."""
    _, base, w, _ = _spline_setup(pos, box, grid)
    blocks = q[:, None, None, None] * w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    return jnp.fft.rfftn(_spread(base, blocks, grid))


def _reciprocal_plain(pos, q, box, alpha, grid, acc):
    structure = _structure_factor(pos, q, box, grid)
    weights, mult = _influence(box, alpha, grid)
    s2 = jnp.real(structure) ** 2 + jnp.imag(structure) ** 2
    return 0.5 * jnp.sum((mult * weights * s2).astype(acc)), structure


@functools.cache
def _reciprocal_with_rule(grid: tuple, acc):
    """The reciprocal sum with derivatives by B-spline interpolation of the convolved grid."""

    @jax.custom_vjp
    def energy(pos, q, box, alpha):
        return _reciprocal_plain(pos, q, box, alpha, grid, acc)[0]

    def fwd(pos, q, box, alpha):
        e, structure = _reciprocal_plain(pos, q, box, alpha, grid, acc)
        return e, (pos, q, box, alpha, structure)

    def bwd(res, g):
        pos, q, box, alpha, structure = res
        recip, base, w, dw = _spline_setup(pos, box, grid)
        weights, mult = _influence(box, alpha, grid)
        # dE/d(grid point) = sum_k W(k) S(k) exp(+2 pi i k.g / n): the convolved grid
        potential = jnp.fft.irfftn(weights * structure, s=grid) * math.prod(grid)
        vals = _interpolate(base, potential)  # (N, 5, 5, 5)
        wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
        dwx, dwy, dwz = dw[:, 0], dw[:, 1], dw[:, 2]
        t_z = jnp.einsum("nabc,nc->nab", vals, wz)
        t_dz = jnp.einsum("nabc,nc->nab", vals, dwz)
        t_yz = jnp.einsum("nab,nb->na", t_z, wy)
        dq = jnp.einsum("na,na->n", t_yz, wx)
        du = jnp.stack([
            jnp.einsum("na,na->n", t_yz, dwx),
            jnp.einsum("na,na->n", jnp.einsum("nab,nb->na", t_z, dwy), wx),
            jnp.einsum("na,na->n", jnp.einsum("nab,nb->na", t_dz, wy), wx),
        ], axis=1)
        ds = q[:, None] * du * jnp.asarray(grid, pos.dtype)[None, :]  # dE/d(fractional coords)
        dpos = ds @ recip.T
        # the box enters through s = x R(B) and through the weights (|S|^2 is fixed at fixed s)
        s2 = lax.stop_gradient(jnp.real(structure) ** 2 + jnp.imag(structure) ** 2)

        def box_terms(b, a):
            wb, _ = _influence(b, a, grid)
            return pos @ _recip_box(b), 0.5 * jnp.sum((mult * wb * s2).astype(acc))

        _, pullback = jax.vjp(box_terms, box, alpha)
        dbox, dalpha = pullback((ds, jnp.ones((), acc)))
        return (_cotangent(dpos, g, pos), _cotangent(dq, g, q), _cotangent(dbox, g, box),
                _cotangent(dalpha, g, alpha))

    energy.defvjp(fwd, bwd)
    return energy


def pme_reciprocal_energy(positions, charges, box, alpha, grid, *, compute_dtype=None, accumulate_dtype=None,
                          custom_gradients: bool = True):
    """E_reciprocal, the smooth PME k-space sum without the k = 0 term [kJ/mol].

    Args:
        positions: (N, 3) [nm] (any periodic image).
        charges: (N,) [e].
        box: (3, 3) reduced box [nm].
        alpha: Ewald splitting parameter [nm^-1].
        grid: (nx, ny, nz) static grid sizes (``pme_parameters``); changing it recompiles.
        compute_dtype: dtype of the grid and FFT (defaults to the positions').
        accumulate_dtype: dtype of the k-space sum (defaults to ``compute_dtype``).
        custom_gradients: forces by B-spline interpolation in a ``custom_vjp``
            (fast); ``False`` uses plain autodiff (the reference).
    """
    compute, acc = _dtypes(positions, compute_dtype, accumulate_dtype)
    grid = tuple(int(n) for n in grid)
    args = (positions.astype(compute), charges.astype(compute), _reduced(box.astype(compute)),
            jnp.asarray(alpha, compute))
    if custom_gradients:
        return _reciprocal_with_rule(grid, acc)(*args)
    return _reciprocal_plain(*args, grid, acc)[0]

