"""Generalized-Born implicit solvent: OBC/HCT Born radii, GB polarization, ACE surface term.

This is Amber's ``igb=5`` (GB-OBC2, the default), ``igb=2`` (OBC1) and ``igb=1`` (HCT)
with the ACE non-polar term, computed as OpenMM's ``GBSAOBCForce`` (Reference platform,
``ReferenceObc.cpp``) and the equivalent ``CustomGBForce`` recipes of
``openmm.app.internal.customgbforces`` do.

Per atom i with intrinsic radius rho_i [nm], offset radius ``or_i = rho_i - offset``
(offset = 0.009 nm) and scaled offset radius ``sr_i = screen_i * or_i``:

- HCT descreening integral over partners j (Hawkins, Cramer, Truhlar 1996), for
  ``or_i < r + sr_j`` with ``U = r + sr_j``, ``L = max(or_i, |r - sr_j|)``::

      I_i = 1/2 sum_j [1/L - 1/U + r/4 (1/U^2 - 1/L^2) + ln(L/U) / (2 r)
                       + sr_j^2 / (4 r) (1/L^2 - 1/U^2)
                       + 2 (1/or_i - 1/L)  if or_i < sr_j - r   (i inside j's sphere)]

- Born radius: OBC (Onufriev, Bashford, Case 2004) with psi = I_i or_i::

      B_i = 1 / (1/or_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / rho_i)

  (OBC2: 1.0, 0.8, 4.85; OBC1: 0.8, 0.0, 2.909125), or HCT: ``B_i = 1 / (1/or_i - I_i)``.
- Polarization energy, with ``pre = -COULOMB (1/eps_solute - 1/eps_solvent)`` and
  ``f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))``::

      E_pol = sum_i pre q_i^2 / (2 B_i) + sum_{i<j} pre q_i q_j (1/f_ij - 1/r_c)

  (the ``1/r_c`` shift only with a cutoff, pairs only, not the self terms).
- ACE non-polar term (Schaefer, Bartels, Karplus 1998, with Ponder's sixth power)::

      E_np = sum_i 4 pi sigma (rho_i + r_probe)^2 (rho_i / B_i)^6     (for B_i > 0)

  sigma = 2.25936 kJ/mol/nm^2 (0.0054 kcal/mol/A^2) and r_probe = 0.14 nm by default.

GB couples every pair of atoms, bonded ones included: pass a neighbor table built with
an *empty* exclusion set (``allocate_neighbors(..., exclusion_table(n, []), cutoff, skin)``),
not the table of the Lennard-Jones/Coulomb terms; without a cutoff pass ``None`` (all pairs,
no table: each chunk of rows reads the partner arrays as contiguous rows). With a cutoff, pairs farther apart than the cutoff are left
out of both the Born radii and the energy, as in OpenMM (``r > cutoff`` skipped).
An atom with intrinsic radius 0 is absent (the padding atoms of batched systems): it
neither descreens nor adds a surface term, and with zero charge it adds nothing at all.

Every sum is a row sum over the full (N, K) neighbor table, done in chunks of rows
(``lax.map``) so that no (N, K) temporaries are built. ``obc_energy`` carries hand-written
position derivatives (a ``custom_vjp``: each atom sums its own row, no scatter-adds), while
``obc_energy_reference`` is the same energy in plain jnp differentiated by ``jax.grad``;
parameter gradients of both come from autodiff.

References:
    Hawkins, Cramer, Truhlar, J. Phys. Chem. 100, 19824 (1996).
    Onufriev, Bashford, Case, Proteins 55, 383 (2004).
    Schaefer, Bartels, Karplus, J. Mol. Biol. 284, 835 (1998).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import tuning
from .constants import COULOMB
from .errors import InputError

#: (alpha, beta, gamma) of the OBC Born-radius formula; ``None`` means plain HCT.
GB_MODELS = {"obc2": (1.0, 0.8, 4.85), "obc1": (0.8, 0.0, 2.909125), "hct": None}
#: OpenMM's default ACE surface energy [kJ/mol/nm^2] (0.0054 kcal/mol/A^2).
SURFACE_TENSION = 2.25936
#: ACE solvent probe radius [nm].
PROBE_RADIUS = 0.14
#: Dielectric offset subtracted from intrinsic radii [nm].
DIELECTRIC_OFFSET = 0.009


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static settings (hashable; changing any of them recompiles)."""

    cutoff: float | None
    pre: float  # -COULOMB (1/eps_in - 1/eps_out)
    ace: float  # 4 pi sigma, 0 disables the surface term
    probe: float
    obc: tuple | None
    offset: float
    compute: np.dtype
    accumulate: np.dtype
    chunk: int


def _config(positions, cutoff, box, solute_dielectric, solvent_dielectric, surface_tension, probe_radius,
            model, dielectric_offset, compute_dtype, accumulate_dtype, chunk_size) -> _Config:
    """Validate the options on the host and freeze them."""
    if isinstance(model, str):
        if model not in GB_MODELS:
            raise InputError(f"unknown GB model {model!r}: choose one of {', '.join(GB_MODELS)} "
                             "or pass (alpha, beta, gamma)")
        obc = GB_MODELS[model]
    else:
        obc = tuple(float(c) for c in model)
        if len(obc) != 3:
            raise InputError(f"model must be a name or (alpha, beta, gamma), got {model!r}")
    if box is not None and cutoff is None:
        raise InputError("a periodic box needs a cutoff for GB (OpenMM's CutoffPeriodic): pass cutoff=")
    if cutoff is not None and not float(cutoff) > 0:
        raise InputError(f"cutoff must be positive [nm], got {cutoff}")
    if solute_dielectric != 0 and solvent_dielectric != 0:
        pre = -COULOMB * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)
    else:  # OpenMM's convention: a zero dielectric switches the polar term off
        pre = 0.0
    sigma = 0.0 if surface_tension is None else float(surface_tension)
    compute = np.dtype(compute_dtype) if compute_dtype is not None else np.dtype(jnp.asarray(positions).dtype)
    if not np.issubdtype(compute, np.floating):
        compute = np.dtype(jnp.zeros(()).dtype)
    accumulate = np.dtype(accumulate_dtype) if accumulate_dtype is not None else compute
    for dt in (compute, accumulate):
        if dt == np.float64 and not jax.config.read("jax_enable_x64"):
            raise InputError("float64 GB needs jax_enable_x64: call jax.config.update('jax_enable_x64', True) "
                             "at start-up, or use float32")
    return _Config(None if cutoff is None else float(cutoff), float(pre), 4.0 * math.pi * sigma,
                   float(probe_radius), obc, float(dielectric_offset), compute, accumulate,
                   tuning.row_chunk("gb") if chunk_size is None else int(chunk_size))


# ----------------------------------------------------------------------------- row-chunked plumbing


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["n"])
@dataclasses.dataclass(frozen=True)
class AllPairs:
    """Stands for a table in which every row lists every atom (no cutoff): no (N, N) table is built.

    Row chunks then take each partner array as one contiguous (1, N) row instead of
    gathering it through an (N, N - 1) index table (27 MB for T4L, per replica in an
    ensemble); self pairs are masked.
    """

    n: int

    @property
    def shape(self):
        return (self.n, self.n)


def _take(values, partners):
    """``values[partners]`` for a table chunk, or every real atom as one (1, N) row."""
    if isinstance(partners, AllPairs):
        return values[None, :partners.n]
    return values[partners]


def _map_rows(fn, idx, chunk):
    """Apply ``fn(rows (B,), partners (B, K))`` to chunks of rows; stack the per-row outputs.

    Rows past the last atom (padding up to a whole chunk) get index N and an all-padding
    partner row, so ``fn`` sees only valid-or-masked work. With ``idx`` an ``AllPairs``,
    ``fn`` gets it as ``partners``.
    """
    n, k = idx.shape
    chunk = max(1, min(chunk, n))
    n_pad = -(-n // chunk) * chunk
    rows = jnp.arange(n_pad, dtype=jnp.int32 if isinstance(idx, AllPairs) else idx.dtype)
    rows = jnp.where(rows < n, rows, n)
    if isinstance(idx, AllPairs):
        out = jax.lax.map(lambda r: fn(r, idx), rows.reshape(-1, chunk))
    else:
        idx_p = jnp.concatenate([idx, jnp.full((n_pad - n, k), n, idx.dtype)]) if n_pad > n else idx
        out = jax.lax.map(lambda a: fn(a[0], a[1]), (rows.reshape(-1, chunk), idx_p.reshape(-1, chunk, k)))
    return jax.tree_util.tree_map(lambda o: o.reshape((n_pad,) + o.shape[2:])[:n], out)


def _pad(a, value):
    """Append one entry (the padding atom N) to a per-atom array."""
    return jnp.concatenate([a, jnp.full((1,) + a.shape[1:], value, a.dtype)])


def _displacements(xyz, rows, partners, box):
    """Minimum-image components (B, K) of x_j - x_i, kept as separate x, y, z arrays."""
    x, y, z = xyz
    dx = _take(x, partners) - x[rows][:, None]
    dy = _take(y, partners) - y[rows][:, None]
    dz = _take(z, partners) - z[rows][:, None]
    if box is not None:
        # reduced triclinic box: subtract c, then b, then a (as kernels.geometry.minimum_image)
        s = jnp.round(dz / box[2, 2])
        dx, dy, dz = dx - s * box[2, 0], dy - s * box[2, 1], dz - s * box[2, 2]
        s = jnp.round(dy / box[1, 1])
        dx, dy = dx - s * box[1, 0], dy - s * box[1, 1]
        dx = dx - jnp.round(dx / box[0, 0]) * box[0, 0]
    return dx, dy, dz


def _pair_mask(rows, partners, d2, n, cfg):
    """Real partners within the cutoff.

    ``r^2 < cutoff^2`` as OpenMM's CPU platform (the Reference platform keeps r == cutoff;
    the two differ only on exact ties). In float32 a pair within ~1e-7 nm of the cutoff can
    land on either side, as on any single-precision platform.
    """
    if isinstance(partners, AllPairs):
        mask = (jnp.arange(n, dtype=rows.dtype)[None, :] != rows[:, None]) & (rows[:, None] < n)
    else:
        mask = (partners < n) & (rows[:, None] < n)
    if cfg.cutoff is not None:
        mask = mask & (d2 < cfg.cutoff * cfg.cutoff)
    return mask


def _hct_term(r, or_i, sr_j, mask):
    """HCT descreening of i by j (B, K), as 2 x its share of I_i, and t3 / r.

    t3 = -(1/2) d(term)/dr is OpenMM's name for the radial derivative; the returned t3 / r
    times the displacement gives the pair's force through I_i.
    """
    upper = r + sr_j
    # a partner of scaled radius 0 (absent from GB: padding) descreens nothing; without this its
    # terms cancel only up to rounding (L = U = r), leaving ~1e-22 forces on padding atoms
    on = mask & (or_i < upper) & (sr_j > 0)
    lower = jnp.maximum(or_i, jnp.abs(r - sr_j))
    lower = jnp.where(on, lower, 1.0)
    upper = jnp.where(on, upper, 1.0)
    rs = jnp.where(on, r, 1.0)
    l, u = 1.0 / lower, 1.0 / upper
    l2, u2 = l * l, u * u
    inv_r = 1.0 / rs
    log_ratio = jnp.log(u / l)
    term = l - u + 0.25 * rs * (u2 - l2) + 0.5 * inv_r * log_ratio + 0.25 * sr_j * sr_j * inv_r * (l2 - u2)
    inside = on & (or_i < sr_j - r)
    term = term + jnp.where(inside, 2.0 * (1.0 / or_i - l), 0.0)
    # the derivative through L and U cancels (exactly), leaving only the explicit r-dependence
    t3 = 0.125 * (1.0 + sr_j * sr_j * inv_r * inv_r) * (l2 - u2) + 0.25 * log_ratio * inv_r * inv_r
    return jnp.where(on, term, 0.0), jnp.where(on, t3 * inv_r, 0.0)


def _born_from_integral(integral, offset_radii, radii, cfg):
    """Born radii B (N,) and dB/dI (N,) from the descreening integral."""
    if cfg.obc is None:
        present = radii > 0
        born = 1.0 / (1.0 / offset_radii - integral)
        return jnp.where(present, born, 1.0), jnp.where(present, born * born, 0.0)
    alpha, beta, gamma = cfg.obc
    present = radii > 0
    safe_radii = jnp.where(present, radii, 1.0)
    psi = integral * offset_radii
    t = jnp.tanh(alpha * psi - beta * psi * psi + gamma * psi * psi * psi)
    born = 1.0 / (1.0 / offset_radii - t / safe_radii)
    dpsi = offset_radii * (alpha - 2.0 * beta * psi + 3.0 * gamma * psi * psi)
    dborn = born * born * (1.0 - t * t) * dpsi / safe_radii
    # absent atoms (radius 0: padding) get a harmless unit Born radius and no derivative
    return jnp.where(present, born, 1.0), jnp.where(present, dborn, 0.0)


def _prepare(positions, charges, radii, screen, box, idx, cfg):
    """Cast inputs to the compute dtype and pad per-atom arrays with the padding atom N."""
    cd = cfg.compute
    pos = jnp.asarray(positions, cd)
    xyz = tuple(_pad(pos[:, a], 0.0) for a in range(3))
    radii = jnp.asarray(radii, cd)
    # an atom of radius 0 is absent from GB (padding of batched systems): it neither
    # descreens (scaled radius 0 makes its integral terms vanish) nor adds a surface term
    present = radii > 0
    offset_radii = jnp.where(present, radii - cfg.offset, 1.0)
    scaled = jnp.where(present, jnp.asarray(screen, cd) * offset_radii, 0.0)
    q = jnp.asarray(charges, cd)
    b = None if box is None else jnp.asarray(box, cd)
    return xyz, q, radii, offset_radii, scaled, b, idx if isinstance(idx, AllPairs) else jnp.asarray(idx)


def _born_pass(xyz, offset_radii, scaled, box, idx, cfg):
    """Descreening integrals I (N,) as row sums."""
    n = idx.shape[0]
    or_p, sr_p = _pad(offset_radii, 1.0), _pad(scaled, 0.0)

    def chunk(rows, partners):
        dx, dy, dz = _displacements(xyz, rows, partners, box)
        d2 = dx * dx + dy * dy + dz * dz
        mask = _pair_mask(rows, partners, d2, n, cfg)
        r = jnp.sqrt(jnp.where(mask, d2, 1.0))
        term, _ = _hct_term(r, or_p[rows][:, None], _take(sr_p, partners), mask)
        return 0.5 * jnp.sum(term, axis=1)

    return _map_rows(chunk, idx, cfg.chunk)


def _ace(radii, born, cfg):
    """Per-atom ACE energies (N,) [kJ/mol]; zero where B <= 0, as OpenMM."""
    if cfg.ace == 0.0:
        return jnp.zeros_like(born)
    ok = (born > 0) & (radii > 0)
    ratio = radii / jnp.where(ok, born, 1.0)
    r6 = ratio * ratio * ratio
    r6 = r6 * r6
    return jnp.where(ok, cfg.ace * (radii + cfg.probe) ** 2 * r6, 0.0)


def _pair_energy_terms(dx, dy, dz, mask, b_i, b_j, cfg):
    """1/f - 1/rc (B, K) and the pieces the forces need."""
    d2 = jnp.where(mask, dx * dx + dy * dy + dz * dz, 1.0)
    bb = b_i * b_j
    bb = jnp.where(mask, bb, 1.0)
    dd = d2 / (4.0 * bb)
    ex = jnp.exp(-dd)
    f2 = d2 + bb * ex
    inv_f = 1.0 / jnp.sqrt(f2)
    g = inv_f - (0.0 if cfg.cutoff is None else 1.0 / cfg.cutoff)
    return jnp.where(mask, g, 0.0), ex, dd, inv_f


# ----------------------------------------------------------------------------- plain reference


def _parts_reference(positions, charges, radii, screen, box, idx, cfg):
    """(polar, nonpolar) energies [kJ/mol] in plain jnp (autodiff for every derivative)."""
    xyz, q, radii, offset_radii, scaled, b, idx = _prepare(positions, charges, radii, screen, box, idx, cfg)
    n = idx.shape[0]
    integral = _born_pass(xyz, offset_radii, scaled, b, idx, cfg)
    born, _ = _born_from_integral(integral, offset_radii, radii, cfg)
    q_p, b_p = _pad(q, 0.0), _pad(born, 1.0)

    def chunk(rows, partners):
        dx, dy, dz = _displacements(xyz, rows, partners, b)
        mask = _pair_mask(rows, partners, dx * dx + dy * dy + dz * dz, n, cfg)
        g, _, _, _ = _pair_energy_terms(dx, dy, dz, mask, b_p[rows][:, None], _take(b_p, partners), cfg)
        return jnp.sum(_take(q_p, partners) * g, axis=1)

    row = _map_rows(chunk, idx, cfg.chunk)
    acc = cfg.accumulate
    # each unordered pair sits in both rows of the full table: halve the row sums
    polar = 0.5 * cfg.pre * (jnp.sum((q * row).astype(acc)) + jnp.sum((q * q / born).astype(acc)))
    nonpolar = jnp.sum(_ace(radii, born, cfg).astype(acc))
    return polar, nonpolar


# ----------------------------------------------------------------------------- explicit forces


def _forward_with_residuals(positions, charges, radii, screen, box, idx, cfg):
    """Energies plus what the position derivative needs (all row-local sums)."""
    xyz, q, radii_c, offset_radii, scaled, b, idx = _prepare(positions, charges, radii, screen, box, idx, cfg)
    n = idx.shape[0]
    integral = _born_pass(xyz, offset_radii, scaled, b, idx, cfg)
    born, dborn = _born_from_integral(integral, offset_radii, radii_c, cfg)
    q_p, b_p = _pad(q, 0.0), _pad(born, 1.0)

    def chunk(rows, partners):
        dx, dy, dz = _displacements(xyz, rows, partners, b)
        mask = _pair_mask(rows, partners, dx * dx + dy * dy + dz * dz, n, cfg)
        b_i, b_j = b_p[rows][:, None], _take(b_p, partners)
        g, ex, dd, inv_f = _pair_energy_terms(dx, dy, dz, mask, b_i, b_j, cfg)
        qj = _take(q_p, partners)
        inv_f3 = jnp.where(mask, inv_f * inv_f * inv_f, 0.0)
        # d(1/f)/dr / r and d(1/f)/dB_i, per unit q_i q_j
        c_r = -(1.0 - 0.25 * ex) * inv_f3
        c_b = -0.5 * ex * (1.0 + dd) * b_j * inv_f3
        energy = jnp.sum(qj * g, axis=1)
        dedb = jnp.sum(qj * c_b, axis=1)
        w = qj * c_r  # dE/dx_i = -q_i pre sum_j w_ij (x_j - x_i)
        fx, fy, fz = jnp.sum(w * dx, axis=1), jnp.sum(w * dy, axis=1), jnp.sum(w * dz, axis=1)
        return energy, dedb, jnp.stack([fx, fy, fz], axis=-1)

    row_e, row_dedb, row_f = _map_rows(chunk, idx, cfg.chunk)
    acc = cfg.accumulate
    polar = 0.5 * cfg.pre * (jnp.sum((q * row_e).astype(acc)) + jnp.sum((q * q / born).astype(acc)))
    ace = _ace(radii_c, born, cfg)
    nonpolar = jnp.sum(ace.astype(acc))
    # dE/dB per atom, split by part so that the cotangents can weight them
    dedb_pol = cfg.pre * q * row_dedb - 0.5 * cfg.pre * q * q / (born * born)
    dedb_np = jnp.where(born > 0, -6.0 * ace / jnp.where(born > 0, born, 1.0), 0.0)
    direct = cfg.pre * q[:, None] * row_f  # = -dE_pol/dx along the explicit r-dependence
    res = (xyz, offset_radii, scaled, b, idx, dborn, dedb_pol, dedb_np, direct)
    return (polar, nonpolar), res


def _born_chain_forces(xyz, offset_radii, scaled, box, idx, g_born, cfg):
    """-dE/dx (N, 3) through the Born radii, given G_i = dE/dI_i: each atom sums its row.

    Pair (k, j) moves I_k (screened by j) and I_j (screened by k); both are in row k of a full
    table, so no scatter is needed.
    """
    n = idx.shape[0]
    or_p, sr_p, g_p = _pad(offset_radii, 1.0), _pad(scaled, 0.0), _pad(g_born, 0.0)

    def chunk(rows, partners):
        dx, dy, dz = _displacements(xyz, rows, partners, box)
        d2 = dx * dx + dy * dy + dz * dz
        mask = _pair_mask(rows, partners, d2, n, cfg)
        r = jnp.sqrt(jnp.where(mask, d2, 1.0))
        or_i, sr_i = or_p[rows][:, None], sr_p[rows][:, None]
        _, t_ij = _hct_term(r, or_i, _take(sr_p, partners), mask)
        _, t_ji = _hct_term(r, _take(or_p, partners), sr_i, mask)
        # dI/dr = -t3, so (dE/dr) / r = -(G_k t3_kj + G_j t3_jk) / r = -w
        w = g_p[rows][:, None] * t_ij + _take(g_p, partners) * t_ji
        return jnp.stack([jnp.sum(w * dx, axis=1), jnp.sum(w * dy, axis=1), jnp.sum(w * dz, axis=1)], axis=-1)

    # F_k = sum_j w_kj (x_k - x_j), and the chunks summed w_kj (x_j - x_k)
    return -_map_rows(chunk, idx, cfg.chunk)


@functools.lru_cache(maxsize=64)
def _parts_fast(cfg):
    """The energy parts with hand-written position derivatives, for one static config."""

    @jax.custom_vjp
    def parts(positions, charges, radii, screen, box, idx):
        return _parts_reference(positions, charges, radii, screen, box, idx, cfg)

    def fwd(positions, charges, radii, screen, box, idx):
        out, res = _forward_with_residuals(positions, charges, radii, screen, box, idx, cfg)
        return out, (res, positions, charges, radii, screen, box, idx)

    def bwd(saved, cotangent):
        res, positions, charges, radii, screen, box, idx = saved
        xyz, offset_radii, scaled, b, idx_c, dborn, dedb_pol, dedb_np, direct = res
        cd = cfg.compute
        g_pol, g_np = (jnp.asarray(c, cd) for c in cotangent)
        g_born = (g_pol * dedb_pol + g_np * dedb_np) * dborn
        forces = g_pol * direct + _born_chain_forces(xyz, offset_radii, scaled, b, idx_c, g_born, cfg)
        d_pos = (-forces).astype(jnp.asarray(positions).dtype)

        # parameter (and box) cotangents by autodiff of the plain energy; under jit XLA
        # drops this whole branch when only forces are asked for
        def of_params(c, r, s, bx):
            return _parts_reference(positions, c, r, s, bx, idx, cfg)

        _, vjp = jax.vjp(of_params, charges, radii, screen, box)
        d_q, d_r, d_s, d_box = vjp(cotangent)
        return d_pos, d_q, d_r, d_s, d_box, None

    parts.defvjp(fwd, bwd)
    return parts


# ----------------------------------------------------------------------------- public API


_DOC_ARGS = """Args:
        positions: (N, 3) positions [nm].
        charges: (N,) partial charges [e].
        radii: (N,) intrinsic GB radii rho [nm] (prmtop RADII / 10).
        screen: (N,) HCT screening factors [-] (prmtop SCREEN).
        neighbors_idx: (N, K) int full neighbor table padded with N, built *without
            exclusions* (GB couples bonded atoms too); with a cutoff it must hold every
            pair within the cutoff. None (no cutoff only): all pairs, without a table.
        box: (3, 3) reduced box vectors [nm] (rows a, b, c) for periodic systems, or None.
        cutoff: pair cutoff [nm] or None (all pairs). Pairs beyond it count neither in the
            Born radii nor in the energy, and pair energies are shifted by -1/cutoff.
        solute_dielectric, solvent_dielectric: dielectric constants (OpenMM: 1.0, 78.5).
        surface_tension: ACE surface energy sigma [kJ/mol/nm^2]; None or 0 switches the
            non-polar term off. Energy per atom: 4 pi sigma (rho + probe)^2 (rho/B)^6.
        probe_radius: solvent probe radius [nm] of the ACE term.
        model: 'obc2' (Amber igb=5, default), 'obc1' (igb=2), 'hct' (igb=1), or an
            (alpha, beta, gamma) tuple of OBC constants. Static (changing it recompiles).
        dielectric_offset: subtracted from the radii [nm] (0.009 in Amber and OpenMM).
        return_parts: return (polar, nonpolar) instead of their sum.
        compute_dtype: dtype of the pair math (default: the dtype of ``positions``).
        accumulate_dtype: dtype of the energy sums (default: ``compute_dtype``); float64
            with float32 pair math is diffmd's 'mixed' precision.
        chunk_size: rows per chunk of the row loop (static; trades memory for speed;
            None takes ``tuning.row_chunk("gb")``: 128 on a CPU, fastest on T4L on 2 cores).
"""


def _table(neighbors_idx, positions, cutoff):
    """The neighbor table as an array, or ``AllPairs`` for ``None`` (all pairs; no cutoff only)."""
    if neighbors_idx is not None:
        return jnp.asarray(neighbors_idx)
    if cutoff is not None:
        raise InputError("GB with a cutoff needs its neighbor table (neighbors_idx); None means all pairs, "
                         "which only applies without a cutoff")
    return AllPairs(int(jnp.shape(positions)[0]))


def obc_energy(positions, charges, radii, screen, neighbors_idx, box=None, cutoff=None, *,
               solute_dielectric=1.0, solvent_dielectric=78.5, surface_tension=SURFACE_TENSION,
               probe_radius=PROBE_RADIUS, model="obc2", dielectric_offset=DIELECTRIC_OFFSET,
               return_parts=False, compute_dtype=None, accumulate_dtype=None, chunk_size=None):
    """Generalized-Born (OBC/HCT) solvation energy with the ACE surface term [kJ/mol].

    Matches OpenMM's ``GBSAOBCForce`` (model 'obc2'). Forces are ``-jax.grad`` with respect
    to ``positions``: the position derivative is hand-written (row sums, no scatter-adds)
    through a ``custom_vjp``; gradients with respect to charges, radii, screen and box come
    from autodiff of ``obc_energy_reference``. Reverse-mode only (``jax.jacfwd`` and
    ``jax.hessian`` need ``obc_energy_reference``).

    __ARGS__

    Returns:
        Scalar energy in ``accumulate_dtype``, or (polar, nonpolar) if ``return_parts``.

    Example:
        >>> import numpy as np
        >>> from diffmd.kernels.neighbors import dense_neighbors, exclusion_table
        >>> pos = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]], np.float32)
        >>> nbrs = dense_neighbors(2, exclusion_table(2, []))
        >>> e = obc_energy(pos, np.array([0.5, -0.5], np.float32), np.full(2, 0.15, np.float32),
        ...                np.full(2, 0.8, np.float32), nbrs.idx)
        >>> bool(e < 0)
        True
    """
    cfg = _config(positions, cutoff, box, solute_dielectric, solvent_dielectric, surface_tension, probe_radius,
                  model, dielectric_offset, compute_dtype, accumulate_dtype, chunk_size)
    positions, charges, radii, screen = (jnp.asarray(a) for a in (positions, charges, radii, screen))
    box = None if box is None else jnp.asarray(box)
    parts = _parts_fast(cfg)(positions, charges, radii, screen, box, _table(neighbors_idx, positions, cutoff))
    return parts if return_parts else parts[0] + parts[1]


def obc_energy_reference(positions, charges, radii, screen, neighbors_idx, box=None, cutoff=None, *,
                         solute_dielectric=1.0, solvent_dielectric=78.5, surface_tension=SURFACE_TENSION,
                         probe_radius=PROBE_RADIUS, model="obc2", dielectric_offset=DIELECTRIC_OFFSET,
                         return_parts=False, compute_dtype=None, accumulate_dtype=None, chunk_size=None):
    """The same energy as ``obc_energy`` in plain jnp: every derivative by autodiff.

    Slower forces (gathers turn into scatter-adds), but forward mode and higher derivatives work.

    __ARGS__

    Returns:
        Scalar energy, or (polar, nonpolar) if ``return_parts``.
    """
    cfg = _config(positions, cutoff, box, solute_dielectric, solvent_dielectric, surface_tension, probe_radius,
                  model, dielectric_offset, compute_dtype, accumulate_dtype, chunk_size)
    parts = _parts_reference(positions, charges, radii, screen, box, _table(neighbors_idx, positions, cutoff), cfg)
    return parts if return_parts else parts[0] + parts[1]


def born_radii(positions, radii, screen, neighbors_idx, box=None, cutoff=None, *, model="obc2",
               dielectric_offset=DIELECTRIC_OFFSET, compute_dtype=None, chunk_size=None):
    """Effective Born radii B (N,) [nm] (differentiable by autodiff).

    Args:
        positions: (N, 3) positions [nm].
        radii: (N,) intrinsic radii [nm].
        screen: (N,) screening factors [-].
        neighbors_idx: (N, K) full neighbor table without exclusions, padded with N, or
            None for all pairs (no cutoff).
        box: (3, 3) box [nm] or None.
        cutoff: pair cutoff [nm] or None.
        model: 'obc2', 'obc1', 'hct' or (alpha, beta, gamma).
        dielectric_offset: [nm].
        compute_dtype: dtype of the math (default: that of ``positions``).
        chunk_size: rows per chunk.
    """
    cfg = _config(positions, cutoff, box, 1.0, 78.5, None, PROBE_RADIUS, model, dielectric_offset,
                  compute_dtype, None, chunk_size)
    xyz, _, radii_c, offset_radii, scaled, b, idx = _prepare(positions, jnp.zeros(len(radii)), radii, screen, box,
                                                             _table(neighbors_idx, positions, cutoff), cfg)
    integral = _born_pass(xyz, offset_radii, scaled, b, idx, cfg)
    return _born_from_integral(integral, offset_radii, radii_c, cfg)[0]


for _fn in (obc_energy, obc_energy_reference):
    if _fn.__doc__:  # None under ``python -OO``, which strips docstrings
        _fn.__doc__ = _fn.__doc__.replace("__ARGS__", _DOC_ARGS.strip())
