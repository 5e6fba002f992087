"""Softcore Lennard-Jones for alchemical decoupling: pair energies and long-range tails.

The Beutler et al. (1994) softcore form in the variant openmmtools'
``AbsoluteAlchemicalFactory`` uses by default (a = b = 1, c = 6), for a pair with
Lennard-Jones sigma and epsilon at coupling ``lam`` (lambda_sterics)::

    U(r) = lam * 4 eps x (x - 1),   x = sigma^6 / (alpha (1 - lam) sigma^6 + r^6)

At lam = 1 this is plain Lennard-Jones (4 eps ((sigma/r)^12 - (sigma/r)^6)); at lam < 1
the effective distance never falls below (alpha (1 - lam))^(1/6) sigma, so overlapping
atoms cost a finite energy and the force stays finite. alpha is 0.5 by default.

Pair sigma and epsilon come from Amber's A, B coefficients (A = 4 eps sigma^12,
B = 4 eps sigma^6), so combination rules and NBFIX entries are whatever the tables hold.

The long-range tail ``softcore_tail`` is the integral of the pair energy beyond the
cutoff, int_rc^inf 4 pi r^2 U(r) dr, in closed form (OpenMM integrates the same
expression numerically for a ``CustomNonbondedForce`` with a long-range correction).

References:
    Beutler, Mark, van Schaik, Gerber, van Gunsteren, Chem. Phys. Lett. 222, 529 (1994).
    Pham, Shirts, J. Chem. Phys. 135, 034114 (2011), eq. 13 (the a, b, c exponents).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

#: openmmtools' default softcore alpha (dimensionless).
SOFTCORE_ALPHA = 0.5


def sigma6_epsilon(lj_a, lj_b):
    """sigma^6 [nm^6] and epsilon [kJ/mol] from A [kJ/mol nm^12] and B [kJ/mol nm^6].

    Pairs with A or B zero (hydrogens without Lennard-Jones, padding) get epsilon 0 and
    sigma^6 = 1e-3 nm^6 (any positive value: their energy is zero); gradients there are zero.
    """
    ok = (lj_a > 0) & (lj_b > 0)
    a = jnp.where(ok, lj_a, 1.0)
    b = jnp.where(ok, lj_b, 1.0)
    return jnp.where(ok, a / b, 1e-3), jnp.where(ok, b * b / (4.0 * a), 0.0)


def softcore_lennard_jones(r2, sigma6, epsilon, lam, alpha=SOFTCORE_ALPHA):
    """Softcore Lennard-Jones pair energies [kJ/mol] (elementwise).

    Args:
        r2: squared distances [nm^2].
        sigma6: sigma^6 [nm^6] of each pair.
        epsilon: epsilon [kJ/mol] of each pair.
        lam: coupling, 0 (off) to 1 (plain Lennard-Jones); traced, broadcasts.
        alpha: softcore alpha (dimensionless).

    The caller masks pairs it does not want (r2 of a masked pair may be anything
    positive; at lam = 1 a zero r2 divides by zero).
    """
    r6 = r2 * r2 * r2
    x = sigma6 / (alpha * (1.0 - lam) * sigma6 + r6)
    return lam * 4.0 * epsilon * x * (x - 1.0)


def _atan_ratios(t2):
    """atan(t)/t and (atan(t)/t - 1/(1 + t^2)) / t^2 from t^2 >= 0, stable (and differentiable) at t = 0."""
    small = t2 < 0.01
    ts = jnp.sqrt(jnp.where(small, 1.0, t2))  # the exact branch never sees t < 0.1
    exact1 = jnp.arctan(ts) / ts
    exact2 = (exact1 - 1.0 / (1.0 + ts * ts)) / (ts * ts)
    x = jnp.where(small, t2, 0.0)
    # Taylor series, converged to ~1e-17 for t < 0.1:
    # sum_k>=0 (-1)^k t^2k / (2k + 1) and sum_k>=1 (-1)^(k+1) 2k / (2k + 1) t^(2k - 2)
    series1 = jnp.zeros_like(x)
    for k in range(8, -1, -1):
        series1 = -series1 * x + 1.0 / (2 * k + 1)
    series2 = jnp.zeros_like(x)
    for k in range(9, 0, -1):
        series2 = -series2 * x + 2.0 * k / (2 * k + 1)
    return jnp.where(small, series1, exact1), jnp.where(small, series2, exact2)


def softcore_tail(sigma6, epsilon, lam, cutoff: float, alpha=SOFTCORE_ALPHA):
    """int_rc^inf 4 pi r^2 U(r) dr of the softcore pair energy [kJ/mol nm^3] (elementwise).

    With D = alpha (1 - lam) sigma^6, u = rc^3 and t = sqrt(D) / u::

        int r^2 / (D + r^6) dr   = atan(t) / (3 u t)
        int r^2 / (D + r^6)^2 dr = (atan(t)/t - 1/(1 + t^2)) / (6 u^3 t^2)

    which at lam = 1 give the plain tail 4 pi (A / (9 rc^9) - B / (3 rc^3)).

    Args:
        sigma6, epsilon: pair sigma^6 [nm^6] and epsilon [kJ/mol].
        lam: coupling (traced).
        cutoff: rc [nm] (static).
        alpha: softcore alpha.
    """
    u = float(cutoff) ** 3
    d = alpha * (1.0 - lam) * sigma6
    ratio1, ratio2 = _atan_ratios(jnp.maximum(d, 0.0) / (u * u))
    j1 = ratio1 / (3.0 * u)
    j2 = ratio2 / (6.0 * u**3)
    return 4.0 * math.pi * lam * 4.0 * epsilon * (sigma6 * sigma6 * j2 - sigma6 * j1)
