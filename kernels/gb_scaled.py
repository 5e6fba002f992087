"""Generalized-Born (OBC/HCT) energy with per-atom coupling weights, for alchemical states.

openmmtools' ``AbsoluteAlchemicalFactory`` replaces OpenMM's ``GBSAOBCForce`` by a
``CustomGBForce`` in which every alchemical atom carries a weight w = lambda_electrostatics
(w = 1 for the others). With the notation of ``kernels.gb``::

    I_i   = 1/2 sum_j w_j HCT(r_ij, or_i, sr_j)         (a decoupled atom stops descreening)
    E_pol = sum_i pre w_i q_i^2 / (2 B_i) + sum_{i<j} pre w_i q_i w_j q_j (1/f_ij - 1/r_c)
    E_np  = sum_i w_i 4 pi sigma (rho_i + r_probe)^2 (rho_i / B_i)^6

so at w = 1 everywhere this is exactly ``gb.obc_energy``. Self and surface terms scale
linearly in w, pair terms as w_i w_j, as in openmmtools. The ``- 1/r_c`` pair shift is
applied with a cutoff, as OpenMM's ``GBSAOBCForce`` (and ``gb.obc_energy``) do, so that
w = 1 is the unmodified system; openmmtools' ``CustomGBForce`` leaves it out.

This is the plain formulation (every derivative by autodiff) and shares its formulas with
``kernels.gb``; a fused version belongs in ``gb``'s hand-written-derivative pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import gb


def _map_rows(fn, idx, chunk):
    """``fn(rows (B,), partners (B, K))`` over chunks of rows; per-row outputs stacked to (N, ...)."""
    n, k = idx.shape
    size = max(1, min(chunk, n))
    n_pad = -(-n // size) * size
    rows = jnp.minimum(jnp.arange(n_pad, dtype=idx.dtype), n)
    table = jnp.concatenate([idx, jnp.full((n_pad - n, k), n, idx.dtype)]) if n_pad > n else idx
    out = jax.lax.map(lambda a: fn(a[0], a[1]), (rows.reshape(-1, size), table.reshape(-1, size, k)))
    return out.reshape((n_pad,) + out.shape[2:])[:n]


def scaled_obc_energy(positions, charges, radii, screen, weights, neighbors_idx, box=None, cutoff=None, *,
                      solute_dielectric=1.0, solvent_dielectric=78.5, surface_tension=gb.SURFACE_TENSION,
                      probe_radius=gb.PROBE_RADIUS, model="obc2", dielectric_offset=gb.DIELECTRIC_OFFSET,
                      return_parts=False, compute_dtype=None, accumulate_dtype=None, chunk_size=128):
    """GB-OBC/HCT polarization and ACE energies [kJ/mol] with per-atom coupling weights.

    Args:
        positions: (N, 3) [nm].
        charges: (N,) [e] (unscaled: the weights scale them).
        radii: (N,) intrinsic radii [nm]; screen: (N,) screening factors.
        weights: (N,) coupling weight of each atom, 1 for the unmodified system (traced;
            lambda_electrostatics on alchemical atoms).
        neighbors_idx: (N, K) full partner table *without exclusions*, padded with N.
        box, cutoff, solute_dielectric, solvent_dielectric, surface_tension, probe_radius,
        model, dielectric_offset, compute_dtype, accumulate_dtype, chunk_size: as in
            ``gb.obc_energy``.
        return_parts: return (polar, nonpolar) instead of their sum.

    Returns:
        Scalar energy (accumulate dtype), or (polar, nonpolar).
    """
    cfg = gb._config(positions, cutoff, box, solute_dielectric, solvent_dielectric, surface_tension, probe_radius,
                     model, dielectric_offset, compute_dtype, accumulate_dtype, chunk_size)
    xyz, q, radii_c, offset_radii, scaled, b, idx = gb._prepare(positions, charges, radii, screen, box,
                                                                neighbors_idx, cfg)
    n = idx.shape[0]
    w = jnp.asarray(weights, cfg.compute)
    w_p, sr_p, or_p = gb._pad(w, 0.0), gb._pad(scaled, 0.0), gb._pad(offset_radii, 1.0)

    def descreening(rows, partners):
        dx, dy, dz = gb._displacements(xyz, rows, partners, b)
        d2 = dx * dx + dy * dy + dz * dz
        mask = gb._pair_mask(rows, partners, d2, n, cfg)
        r = jnp.sqrt(jnp.where(mask, d2, 1.0))
        term, _ = gb._hct_term(r, or_p[rows][:, None], sr_p[partners], mask)
        return 0.5 * jnp.sum(w_p[partners] * term, axis=1)

    born, _ = gb._born_from_integral(_map_rows(descreening, idx, cfg.chunk), offset_radii, radii_c, cfg)
    wq = w * q
    wq_p, b_p = gb._pad(wq, 0.0), gb._pad(born, 1.0)

    def pairs(rows, partners):
        dx, dy, dz = gb._displacements(xyz, rows, partners, b)
        mask = gb._pair_mask(rows, partners, dx * dx + dy * dy + dz * dz, n, cfg)
        g, _, _, _ = gb._pair_energy_terms(dx, dy, dz, mask, b_p[rows][:, None], b_p[partners], cfg)
        return jnp.sum(wq_p[partners] * g, axis=1)

    acc = cfg.accumulate
    row = _map_rows(pairs, idx, cfg.chunk)
    # each pair sits in both rows of the full table: halve the row sums
    polar = 0.5 * cfg.pre * (jnp.sum((wq * row).astype(acc)) + jnp.sum((w * q * q / born).astype(acc)))
    nonpolar = jnp.sum((w * gb._ace(radii_c, born, cfg)).astype(acc))
    return (polar, nonpolar) if return_parts else polar + nonpolar
