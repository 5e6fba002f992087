"""Smooth particle-mesh Ewald (SPME) electrostatics with OpenMM's NonbondedForce semantics.

The Coulomb energy of a periodic system is split as OpenMM splits it::

    E = E_direct + E_reciprocal + E_self + E_exclusion + E_neutralizing

    E_direct      = 1/2 sum_i sum_{j in row i, r_ij < r_c} C q_i q_j erfc(alpha r_ij) / r_ij
    E_reciprocal  = 1/2 sum_{k != 0} W(k) |S(k)|^2            (SPME, B-splines of order 5)
    E_self        = -C alpha / sqrt(pi) sum_i q_i^2
    E_exclusion   = -sum_{excluded (i, j)} C q_i q_j erf(alpha r_ij) / r_ij
    E_neutralizing= -C pi Q^2 / (2 V alpha^2),  Q = sum_i q_i

with C = COULOMB [kJ mol^-1 nm e^-2]. Excluded pairs (OpenMM "exceptions",
1-2, 1-3 and 1-4 pairs alike) are missing from the neighbor table, and their
reciprocal-space share is subtracted by ``E_exclusion``; the scaled 1-4
Coulomb terms themselves are plain Coulomb pairs computed elsewhere
(``kernels.nonbonded.pair_energies``). ``E_neutralizing`` is the energy of the
uniform background charge the k = 0 term implies for a charged system (OpenMM's
``-Q^2 / (8 eps0 V alpha^2)``). OpenMM's Reference platform reports
reciprocal + self + neutralizing as its reciprocal-space force group, and
direct + exclusion (+ 1-4 pairs) as its direct group.

The reciprocal sum follows Essmann et al., J. Chem. Phys. 103, 8577 (1995):
charges are spread on an (nx, ny, nz) grid with cardinal B-splines of order 5
in fractional coordinates s = x B^-1, S = FFT(grid), and

    W(m) = C exp(-pi^2 |h|^2 / alpha^2) / (pi V |h|^2 b_x(m_x) b_y(m_y) b_z(m_z)),
    h = B^-1 m  (reciprocal box vectors times the integer frequency m),

with the B-spline moduli b_d computed exactly as OpenMM computes them. Boxes
are (3, 3) arrays of rows a, b, c [nm] in OpenMM's reduced (lower-triangular)
form, so triclinic cells work throughout; the upper triangle is ignored (its
gradient is zero) and V = a_x b_y c_z.

Forces, charge derivatives, box derivatives (the virial) and the derivative
with respect to alpha all come from ``jax.grad``. By default the direct and
reciprocal parts use ``custom_vjp`` rules that write the derivatives out
(row sums over the full neighbor table, B-spline interpolation from the
convolved grid), which is much faster than autodiff on XLA:CPU (DHFR, float32:
direct 0.10 s instead of 1.3 s, reciprocal 18 ms instead of 110 ms) and gives the
same values. Reverse mode composes to any order (gradients of forces, as
training through dynamics needs); forward mode (``jvp``, ``jacfwd``,
``hessian``) does not pass a ``custom_vjp``, so use ``custom_gradients=False``
there, the plain autodiff path that the tests also use as the reference.

The minimum image is exact only for cutoffs up to half the smallest diagonal
entry of the reduced box (OpenMM's rule; check it on the host with
``geometry.check_cutoff_fits``).

Modules: ``pme_direct`` (direct space, exclusion correction), ``pme_reciprocal``
(k-space sum); this one chooses the parameters and adds the parts up.
"""

from __future__ import annotations

import math
from typing import Literal

import jax.numpy as jnp
import numpy as np

from ._pme_common import PME_ORDER
from ._pme_common import SQRT_PI as _SQRT_PI
from ._pme_common import dtypes as _dtypes
from .constants import COULOMB
from .errors import InputError
from .pme_direct import pme_direct_energy, pme_exclusion_correction
from .pme_reciprocal import bspline_moduli, pme_reciprocal_energy

__all__ = ["PME_ORDER", "bspline_moduli", "legal_fft_size", "pme_direct_energy", "pme_energy",
           "pme_exclusion_correction", "pme_neutralizing_energy", "pme_parameters", "pme_reciprocal_energy",
           "pme_self_energy"]

GridRule = Literal["reference", "cpu", "gpu"]


def legal_fft_size(minimum: int, rule: GridRule = "reference") -> int:
    """Smallest grid size >= ``minimum`` that OpenMM's platform ``rule`` would use.

    Args:
        minimum: the size ``calcPMEParameters`` asked for.
        rule: ``"reference"`` keeps it (Reference platform, and what every
            platform's ``calcPMEParameters`` returns); ``"cpu"`` rounds up to
            factors 2, 3, 5, 7 plus at most one factor 11 (the CPU platform's
            PME plugin); ``"gpu"`` rounds up to factors 2, 3, 5, 7 (CUDA,
            OpenCL and HIP platforms).
    """
    if rule not in ("reference", "cpu", "gpu"):
        raise InputError(f"unknown grid rule {rule!r}: choose 'reference', 'cpu' or 'gpu'")
    size = max(int(minimum), 1)
    if rule == "reference":
        return size
    while True:
        rest = size
        for factor in (2, 3, 5, 7):
            while rest % factor == 0:
                rest //= factor
        if rest == 1 or (rule == "cpu" and rest == 11):
            return size
        size += 1


def pme_parameters(box, cutoff: float, tolerance: float = 5e-4, *, alpha: float | None = None,
                   grid=None, grid_rule: GridRule = "reference"):
    """Ewald splitting parameter and grid, chosen as OpenMM's ``calcPMEParameters`` does (host).

    alpha = sqrt(-ln(2 tol)) / r_c and n_d = max(ceil(2 alpha L_d / (3 tol^(1/5))), 6),
    with L_d the diagonal of the reduced box. OpenMM uses the System's default
    box here, so pass the box the system starts from.

    Args:
        box: (3, 3) reduced box vectors as rows [nm] (or (3,) lengths).
        cutoff: direct-space cutoff r_c [nm].
        tolerance: OpenMM's ``ewaldErrorTolerance``.
        alpha: override the splitting parameter [nm^-1]; the grid is then sized
            from it unless ``grid`` is given too.
        grid: override the grid, three ints.
        grid_rule: how sizes are rounded (``legal_fft_size``); ``"reference"``
            (no rounding) matches OpenMM's Reference platform and
            ``getPMEParametersInContext`` on the CPU platform.

    Returns:
        ``(alpha [nm^-1], (nx, ny, nz))``. The grid is static: changing it recompiles.

    Raises:
        InputError: non-positive cutoff, a tolerance outside (0, 0.5), or a grid
            smaller than the B-spline order.
    """
    if not cutoff > 0:
        raise InputError(f"PME needs a positive cutoff [nm], got {cutoff!r}")
    if not 0 < tolerance < 0.5:
        raise InputError(f"ewald error tolerance must lie in (0, 0.5), got {tolerance!r}; OpenMM's default is 5e-4")
    box = np.asarray(box, dtype=np.float64)
    if box.shape == (3,):
        box = np.diag(box)
    if box.shape != (3, 3):
        raise InputError(f"box must be (3, 3) vectors or (3,) lengths [nm], got shape {box.shape}")
    if alpha is None:
        alpha = math.sqrt(-math.log(2.0 * tolerance)) / float(cutoff)
    elif not alpha > 0:
        raise InputError(f"alpha must be positive [1/nm], got {alpha!r}")
    if grid is None:
        scale = 2.0 * alpha / (3.0 * tolerance**0.2)
        grid = tuple(legal_fft_size(max(math.ceil(scale * box[d, d]), 6), grid_rule) for d in range(3))
    grid = tuple(int(n) for n in grid)
    if len(grid) != 3 or min(grid) < PME_ORDER:
        raise InputError(f"PME grid must be three sizes >= {PME_ORDER}, got {grid}")
    return float(alpha), grid


def pme_self_energy(charges, alpha, *, accumulate_dtype=None):
    """E_self = -C alpha / sqrt(pi) sum q^2 [kJ/mol].

    Args:
        charges: (N,) [e].
        alpha: Ewald splitting parameter [nm^-1].
        accumulate_dtype: dtype of the sum (defaults to the charges').
    """
    q = charges.astype(accumulate_dtype or charges.dtype)
    return -COULOMB * alpha / _SQRT_PI * jnp.sum(q * q)


def pme_neutralizing_energy(charges, box, alpha, *, accumulate_dtype=None):
    """E_neutralizing = -C pi Q^2 / (2 V alpha^2) [kJ/mol], zero for a neutral system.

    Args:
        charges: (N,) [e].
        box: (3, 3) reduced box [nm]; V = a_x b_y c_z.
        alpha: Ewald splitting parameter [nm^-1].
        accumulate_dtype: dtype of the sum (defaults to the charges').
    """
    dtype = accumulate_dtype or charges.dtype
    total = jnp.sum(charges.astype(dtype))
    box = box.astype(dtype)
    volume = box[0, 0] * box[1, 1] * box[2, 2]
    return -COULOMB * math.pi * total * total / (2.0 * volume * alpha * alpha)



def pme_energy(positions, charges, box, neighbors_idx, excluded_pairs, alpha, grid, cutoff: float, *,
               compute_dtype=None, accumulate_dtype=None, custom_gradients: bool = True) -> dict:
    """All parts of the PME Coulomb energy [kJ/mol]; the total is ``sum(parts.values())``.

    Args:
        positions: (N, 3) [nm].
        charges: (N,) [e].
        box: (3, 3) reduced box vectors as rows [nm].
        neighbors_idx: (N, K) full neighbor table padded with N, excluded pairs
            absent (``Neighbors.idx``).
        excluded_pairs: (P, 2) int excluded pairs, each once (all OpenMM
            exceptions, 1-4 pairs included); rows holding N are padding.
        alpha: Ewald splitting parameter [nm^-1].
        grid: (nx, ny, nz) PME grid (static).
        cutoff: direct-space cutoff [nm] (static).
        compute_dtype: dtype of pair, grid and FFT math (defaults to the positions').
        accumulate_dtype: dtype of the sums (defaults to ``compute_dtype``).
        custom_gradients: use the written-out derivative rules (see module doc).

    Returns:
        dict with ``direct``, ``reciprocal``, ``self``, ``exclusion`` (already
        negative) and ``neutralizing`` scalars in ``accumulate_dtype``.

    Example:
        >>> alpha, grid = pme_parameters(box, cutoff=0.9)            # doctest: +SKIP
        >>> parts = pme_energy(x, q, box, nbrs.idx, pairs, alpha, grid, 0.9)  # doctest: +SKIP
        >>> forces = -jax.grad(lambda x: sum(pme_energy(x, ...).values()))(x)  # doctest: +SKIP
    """
    compute, acc = _dtypes(positions, compute_dtype, accumulate_dtype)
    kw = {"compute_dtype": compute, "accumulate_dtype": acc}
    return {
        "direct": pme_direct_energy(positions, charges, box, neighbors_idx, alpha, cutoff,
                                    custom_gradients=custom_gradients, **kw),
        "reciprocal": pme_reciprocal_energy(positions, charges, box, alpha, grid,
                                            custom_gradients=custom_gradients, **kw),
        "self": pme_self_energy(charges, alpha, accumulate_dtype=acc),
        "exclusion": pme_exclusion_correction(positions, charges, box, excluded_pairs, alpha, **kw),
        "neutralizing": pme_neutralizing_energy(charges, box, alpha, accumulate_dtype=acc),
    }
