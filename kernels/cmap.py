"""CMAP (correction-map) torsion energies, matching OpenMM's ``CMAPTorsionForce``.

A CMAP term adds an energy E(phi, psi) read from a periodic 2-D grid over two
dihedral angles (in proteins the backbone phi and psi of one residue). The grid
is turned into a smooth surface exactly as OpenMM does it
(``CMAPTorsionForceImpl::calcMapDerivatives``):

1. periodic cubic splines through each grid line give dE/dphi at the nodes, the
   same along the other axis give dE/dpsi, and a spline through the dE/dpsi
   values along phi gives the cross derivative d2E/dphi dpsi;
2. on every grid cell ("patch") a bicubic polynomial
   ``E = sum_{p,q} c[p, q] u^p v^q`` (u, v in [0, 1] the position inside the
   patch) matches the four corner values and the three derivatives.

A periodic spline's node derivatives are a fixed linear function of the node
values, so step 1 is one (S, S) matrix per grid size, built once on the host in
float64; applying it with ``jnp`` keeps the coefficients differentiable with
respect to the grid values (``jax.grad`` through force-field CMAP grids).

Grid convention (OpenMM's): ``grids[m, i, j]`` is the energy [kJ/mol] of map m
at first angle ``i * 2 pi / S`` and second angle ``j * 2 pi / S`` (angles in
[0, 2 pi)). OpenMM's flat list has the same value at ``energy[i + S * j]``, so
``grid = np.reshape(energy, (S, S)).T``; see :func:`grid_from_openmm`.

References:
    OpenMM, openmmapi/src/CMAPTorsionForceImpl.cpp, openmmapi/src/SplineFitter.cpp,
    platforms/reference/src/SimTKReference/ReferenceCMAPTorsionIxn.cpp.
    MacKerell, Feig, Brooks, J. Comput. Chem. 25, 1400 (2004) (CMAP).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .constants import KCAL
from .errors import InputError
from .geometry import minimum_image, safe_norm

TWO_PI = 2.0 * np.pi


@functools.partial(jax.tree_util.register_dataclass, data_fields=["coefficients"], meta_fields=["sizes"])
@dataclasses.dataclass(frozen=True)
class CMAPCoefficients:
    """Bicubic patch coefficients of a set of CMAP grids (a pytree).

    Attributes:
        coefficients: (M, S, S, 4, 4) array [kJ/mol], the only leaf;
            ``coefficients[m, s, t, p, q]`` multiplies ``u^p v^q`` on patch (s, t)
            of map m, where ``u = phi / delta - s``, ``v = psi / delta - t`` and
            ``delta = 2 pi / sizes[m]``. Maps smaller than the largest are zero-padded.
        sizes: static tuple of the M grid sizes (shape-fixing: changing it recompiles).
    """

    coefficients: jax.Array
    sizes: tuple


# ---------------------------------------------------------------------------
# Host-side constant operators
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def spline_derivative_matrix(size: int) -> np.ndarray:
    """Node-derivative operator of a periodic cubic spline on a uniform grid.

    ``D @ y`` gives dE/dx at the nodes ``x_k = k * 2 pi / size`` of the periodic
    cubic spline through values ``y`` (period 2 pi), the same numbers OpenMM's
    ``SplineFitter::createPeriodicSpline`` + ``evaluateSplineDerivative`` give
    (it solves the same cyclic tridiagonal system by Sherman-Morrison; here it is
    solved densely, equal to rounding).

    Args:
        size: number of grid nodes S (>= 3).

    Returns:
        (S, S) float64 matrix [1/rad], read-only.
    """
    h = TWO_PI / size
    eye = np.eye(size)
    shift = np.roll(eye, 1, axis=1)  # (shift @ y)[k] = y[k + 1]
    # Continuity of the first derivative at every node gives, for the node
    # second derivatives m:  h m[k-1] + 4 h m[k] + h m[k+1] = 6 (y[k+1] - 2 y[k] + y[k-1]) / h
    lhs = h * (4.0 * eye + shift + shift.T)
    second_diff = (6.0 / h) * (shift - 2.0 * eye + shift.T)
    m = np.linalg.solve(lhs, second_diff)
    # Derivative of the cubic on [x_k, x_k+1] at its left end.
    deriv = (shift - eye) / h - (h / 6.0) * (2.0 * eye + shift) @ m
    deriv.setflags(write=False)
    return deriv


@functools.lru_cache(maxsize=None)
def _bicubic_matrix() -> np.ndarray:
    """(16, 16) map from corner data to bicubic coefficients (integers).

    The corner data are ordered as in OpenMM: values, then d/du, d/dv, d2/dudv,
    each at the corners (0,0), (1,0), (1,1), (0,1) of the unit patch. The
    coefficient vector is ``c[4 p + q]`` for ``u^p v^q``. Built by inverting
    the 16 interpolation conditions, which yields the classical integer table.
    """
    corners = ((0, 0), (1, 0), (1, 1), (0, 1))
    conditions = np.zeros((16, 16))
    for k, (u, v) in enumerate(corners):
        for p in range(4):
            for q in range(4):
                col = 4 * p + q
                conditions[k, col] = u**p * v**q
                if p > 0:
                    conditions[4 + k, col] = p * u ** (p - 1) * v**q
                if q > 0:
                    conditions[8 + k, col] = q * u**p * v ** (q - 1)
                if p > 0 and q > 0:
                    conditions[12 + k, col] = p * q * u ** (p - 1) * v ** (q - 1)
    weights = np.rint(np.linalg.inv(conditions))
    weights.setflags(write=False)
    return weights


# ---------------------------------------------------------------------------
# Coefficients (differentiable w.r.t. the grids)
# ---------------------------------------------------------------------------


def _single_map_coefficients(grid):
    """(S, S) grid [kJ/mol] -> (S, S, 4, 4) patch coefficients."""
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        grid = grid.astype(jnp.result_type(float))
    size = grid.shape[0]
    dtype = grid.dtype
    deriv = jnp.asarray(spline_derivative_matrix(size), dtype)
    delta = TWO_PI / size
    d1 = deriv @ grid  # d/dphi, splines along the first index
    d2 = grid @ deriv.T  # d/dpsi, splines along the second index
    d12 = deriv @ d2  # OpenMM differentiates d/dpsi along phi

    def corners(f):
        # f at (s, t), (s+1, t), (s+1, t+1), (s, t+1), periodic
        f10 = jnp.roll(f, -1, axis=0)
        return jnp.stack([f, f10, jnp.roll(f10, -1, axis=1), jnp.roll(f, -1, axis=1)], axis=-1)

    rhs = jnp.concatenate(
        [corners(grid), corners(d1) * delta, corners(d2) * delta, corners(d12) * (delta * delta)],
        axis=-1,
    )  # (S, S, 16)
    weights = jnp.asarray(_bicubic_matrix(), dtype)
    coeff = rhs @ weights.T
    return coeff.reshape(size, size, 4, 4)


def cmap_coefficients(grids) -> CMAPCoefficients:
    """Bicubic patch coefficients of CMAP grids, as OpenMM computes them.

    Pure ``jnp`` and linear in the grids, so ``jax.grad`` with respect to grid
    values works (and ``jit``/``vmap`` over sets of grids).

    Args:
        grids: (M, S, S) array [kJ/mol], ``grids[m, i, j]`` the energy at first
            angle ``i 2 pi / S`` and second angle ``j 2 pi / S``; or a sequence of
            (S_m, S_m) arrays when the maps differ in size (they are zero-padded
            to the largest).

    Returns:
        :class:`CMAPCoefficients` with coefficients (M, S_max, S_max, 4, 4)
        [kJ/mol] in the grids' dtype and the static tuple of sizes.

    Raises:
        InputError: a grid that is not square or has fewer than 3 points per axis.
    """
    if isinstance(grids, (list, tuple)):
        maps = [jnp.asarray(g) for g in grids]
    else:
        grids = jnp.asarray(grids)
        if grids.ndim != 3:
            raise InputError(f"CMAP grids must have shape (M, S, S) [kJ/mol], got {grids.shape}")
        maps = None
    shapes = [g.shape for g in maps] if maps is not None else [grids.shape[1:]] * grids.shape[0]
    for shape in shapes:
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 3:
            raise InputError(
                f"each CMAP grid must be square with at least 3 points per axis, got shape {shape}"
            )
    if maps is None:
        if grids.shape[0] == 0:
            raise InputError("no CMAP grids given (M = 0); skip the CMAP term instead")
        # one size: one batched computation
        coeff = jax.vmap(_single_map_coefficients)(grids)
        return CMAPCoefficients(coeff, (int(grids.shape[1]),) * int(grids.shape[0]))
    if not maps:
        raise InputError("no CMAP grids given (M = 0); skip the CMAP term instead")
    s_max = max(g.shape[0] for g in maps)
    padded = []
    for g in maps:
        c = _single_map_coefficients(g)
        pad = s_max - g.shape[0]
        padded.append(jnp.pad(c, ((0, pad), (0, pad), (0, 0), (0, 0))))
    dtype = jnp.result_type(*padded)
    coeff = jnp.stack([c.astype(dtype) for c in padded])
    return CMAPCoefficients(coeff, tuple(int(g.shape[0]) for g in maps))


def grid_from_openmm(size: int, energy) -> np.ndarray:
    """OpenMM's flat map list (``energy[i + size*j]``) -> (size, size) grid [same units]."""
    energy = np.asarray(energy, dtype=np.float64)
    if energy.shape != (size * size,):
        raise InputError(f"CMAP map of size {size} needs {size * size} energies, got {energy.shape}")
    return energy.reshape(size, size).T.copy()


def grid_to_openmm(grid) -> list:
    """(S, S) grid -> OpenMM's flat list for ``CMAPTorsionForce.addMap(S, energy)``."""
    grid = np.asarray(grid, dtype=np.float64)
    return grid.T.reshape(-1).tolist()


# ---------------------------------------------------------------------------
# Energy
# ---------------------------------------------------------------------------


def _dihedral(r1, r2, r3, r4, box):
    """Signed dihedral angle in (-pi, pi] with OpenMM's (IUPAC) sign; finite gradients.

    At collinear atoms the angle is undefined; there it returns 0 with a zero
    gradient instead of NaN.
    """
    b1 = minimum_image(r2 - r1, box)
    b2 = minimum_image(r3 - r2, box)
    b3 = minimum_image(r4 - r3, box)
    n1 = jnp.cross(b1, b2)
    n2 = jnp.cross(b2, b3)
    x = jnp.sum(n1 * n2, axis=-1)
    y = safe_norm(b2) * jnp.sum(b1 * n2, axis=-1)
    ok = x * x + y * y > jnp.finfo(x.dtype).tiny
    return jnp.where(ok, jnp.arctan2(jnp.where(ok, y, 0.0), jnp.where(ok, x, 1.0)), 0.0)


def cmap_energy(positions, box, torsions, map_index, coefficients: CMAPCoefficients, accumulate_dtype=None):
    """Total CMAP energy [kJ/mol], equal to OpenMM's ``CMAPTorsionForce``.

    Each term takes its two dihedrals (atoms a1-a4 and b1-b4), brings them to
    [0, 2 pi), finds the grid patch and evaluates that patch's bicubic
    polynomial. Forces are ``-jax.grad`` with respect to positions; gradients
    with respect to ``coefficients`` (and through :func:`cmap_coefficients`,
    the grids) are exact.

    Args:
        positions: (N, 3) atom positions [nm]; sets the compute dtype.
        box: (3, 3) reduced box vectors as rows [nm], or ``None`` (no periodicity;
            OpenMM applies periodic images to CMAP only when the force says so).
        torsions: (C, 8) int atom indices ``a1 a2 a3 a4 b1 b2 b3 b4`` (OpenMM's
            ``addTorsion`` order), or (C, 5) ``i j k l m`` meaning phi = (i, j, k, l)
            and psi = (j, k, l, m) (Amber's CMAP_INDEX order).
        map_index: (C,) int map of each term, 0-based.
        coefficients: from :func:`cmap_coefficients`.
        accumulate_dtype: dtype of the sum over terms (default: positions' dtype).

    Returns:
        Scalar energy [kJ/mol].
    """
    return jnp.sum(
        cmap_term_energies(positions, box, torsions, map_index, coefficients),
        dtype=accumulate_dtype,
    )


def cmap_energy_from_grids(positions, box, torsions, map_index, grids, accumulate_dtype=None):
    """:func:`cmap_energy` with the coefficients computed from ``grids`` on the fly.

    Convenient when the grids are the trainable parameters: the spline fit is a
    few small matmuls per map, cheap next to a force evaluation. ``grids`` as in
    :func:`cmap_coefficients`; other arguments as in :func:`cmap_energy`.
    """
    coefficients = cmap_coefficients(grids)
    return cmap_energy(positions, box, torsions, map_index, coefficients, accumulate_dtype)


def cmap_term_energies(positions, box, torsions, map_index, coefficients: CMAPCoefficients):
    """Per-term CMAP energies [kJ/mol], shape (C,); see :func:`cmap_energy`."""
    dtype = positions.dtype
    torsions = jnp.asarray(torsions)
    if torsions.ndim != 2 or torsions.shape[-1] not in (5, 8):
        raise InputError(f"CMAP torsions must have shape (C, 8) or (C, 5), got {torsions.shape}")
    if torsions.shape[-1] == 5:
        phi_atoms, psi_atoms = torsions[:, 0:4], torsions[:, 1:5]
    else:
        phi_atoms, psi_atoms = torsions[:, 0:4], torsions[:, 4:8]
    if box is not None:
        box = jnp.asarray(box, dtype)

    def angle(atoms):
        r = positions[atoms]  # (C, 4, 3)
        theta = _dihedral(r[:, 0], r[:, 1], r[:, 2], r[:, 3], box)
        # OpenMM: fmod(theta + 2 pi, 2 pi), the same as shifting negatives up
        return jnp.where(theta < 0, theta + TWO_PI, theta)

    phi = angle(phi_atoms)
    psi = angle(psi_atoms)
    size = jnp.asarray(coefficients.sizes, dtype)[map_index]
    delta = TWO_PI / size
    last = size - 1.0
    # Patch index; an angle that rounds to exactly 2 pi stays in the last patch.
    s = jnp.clip(jnp.floor(phi / delta), 0.0, last)
    t = jnp.clip(jnp.floor(psi / delta), 0.0, last)
    u = phi / delta - s
    v = psi / delta - t
    c = coefficients.coefficients[map_index, s.astype(jnp.int32), t.astype(jnp.int32)].astype(dtype)
    # Horner in v (last axis), then in u.
    v_ = v[:, None]
    along_v = ((c[..., 3] * v_ + c[..., 2]) * v_ + c[..., 1]) * v_ + c[..., 0]  # (C, 4) over p
    return ((along_v[:, 3] * u + along_v[:, 2]) * u + along_v[:, 1]) * u + along_v[:, 0]


# ---------------------------------------------------------------------------
# Amber prmtop sections (host side, io boundary)
# ---------------------------------------------------------------------------


def _section(sections, flag, prefixes):
    for prefix in prefixes:
        if prefix + flag in sections:
            return prefix + flag, sections[prefix + flag]
    return None, None


def cmap_from_prmtop_sections(sections, n_atoms: int | None = None):
    """Convert a prmtop's CMAP sections to OpenMM's convention, as OpenMM's Amber loader does.

    Amber stores each map as ``CMAP_PARAMETER_NN`` [kcal/mol], S*S values with
    phi the slow index and psi the fast one, both starting at -180 degrees.
    OpenMM (``openmm/app/internal/amber_file_parser.py``) converts to kJ/mol and
    shifts both axes by ``S // 2`` nodes so that index 0 is angle 0; for odd S
    this lands half a node off 0, which is kept here so energies stay identical
    to OpenMM's. ``CMAP_INDEX`` lists 1-based atoms i j k l m and a 1-based map
    per term; phi = (i, j, k, l), psi = (j, k, l, m). Chamber prmtops use the
    same sections with a ``CHARMM_`` prefix.

    Args:
        sections: mapping flag name -> sequence of numbers (or numeric strings),
            e.g. ``read_prmtop(path).sections``.
        n_atoms: if given, atom indices are checked against it.

    Returns:
        ``(grids, torsions, map_index)``: grids (M, S, S) float64 [kJ/mol] with
        ``grids[m, i, j]`` the energy at angles (i, j) * 2 pi / S (a list of
        (S_m, S_m) arrays if the maps differ in size); torsions (C, 5) int64
        0-based atoms ``i j k l m`` (phi = i j k l, psi = j k l m; OpenMM's
        ``addTorsion`` order is ``i j k l j k l m``); map_index (C,) int64 0-based.
        A prmtop without CMAP sections gives shapes (0, 0, 0), (0, 5), (0,).

    Raises:
        InputError: a missing or malformed CMAP section, naming the flag.
    """
    prefixes = ("", "CHARMM_")
    index_flag, index = _section(sections, "CMAP_INDEX", prefixes)
    count_flag, count = _section(sections, "CMAP_COUNT", prefixes)
    if index_flag is None and count_flag is None:
        return np.zeros((0, 0, 0)), np.zeros((0, 5), np.int64), np.zeros((0,), np.int64)
    res_flag, resolution = _section(sections, "CMAP_RESOLUTION", prefixes)
    if res_flag is None:
        raise InputError("prmtop has CMAP terms but no %FLAG CMAP_RESOLUTION (or CHARMM_CMAP_RESOLUTION)")
    resolution = np.asarray(resolution).astype(np.int64).reshape(-1)
    if count_flag is not None:
        count = np.asarray(count).astype(np.int64).reshape(-1)
        if count.size < 2:
            raise InputError(f"%FLAG {count_flag} needs 2 entries (terms, maps), got {count.size}")
        n_maps = int(count[1])  # OpenMM takes the number of maps from the second entry
    else:
        n_maps = resolution.size
    if resolution.size < n_maps:
        raise InputError(f"%FLAG {res_flag} lists {resolution.size} grid sizes for {n_maps} CMAP maps")

    grids = []
    for m in range(n_maps):
        size = int(resolution[m])
        flag, values = _section(sections, f"CMAP_PARAMETER_{m + 1:02d}", prefixes)
        if flag is None:
            raise InputError(f"prmtop has {n_maps} CMAP maps but no %FLAG CMAP_PARAMETER_{m + 1:02d}")
        values = np.asarray(values).astype(np.float64).reshape(-1)
        if size < 3 or values.size != size * size:
            raise InputError(
                f"%FLAG {flag} has {values.size} values; its resolution {size} needs {size * size}"
            )
        half = size // 2
        amber = values.reshape(size, size) * KCAL  # [phi, psi], both from -180 degrees
        grids.append(np.roll(amber, (-half, -half), axis=(0, 1)))

    if index_flag is None:
        raise InputError(f"prmtop has %FLAG {count_flag} but no CMAP_INDEX section")
    index = np.asarray(index).astype(np.int64).reshape(-1)
    if index.size % 6:
        raise InputError(f"%FLAG {index_flag} has {index.size} entries, not a multiple of 6 (5 atoms + map)")
    index = index.reshape(-1, 6)
    atoms = index[:, :5] - 1
    map_index = index[:, 5] - 1
    if atoms.size and atoms.min() < 0:
        raise InputError(f"%FLAG {index_flag} holds atom pointers < 1 (they are 1-based)")
    if n_atoms is not None and atoms.size and atoms.max() >= n_atoms:
        raise InputError(f"%FLAG {index_flag} points at atom {atoms.max() + 1} but the system has {n_atoms}")
    if map_index.size and (map_index.min() < 0 or map_index.max() >= n_maps):
        raise InputError(f"%FLAG {index_flag} refers to CMAP maps outside 1..{n_maps}")
    if len({g.shape for g in grids}) <= 1:
        grids = np.stack(grids) if grids else np.zeros((0, 0, 0))
    return grids, atoms, map_index
