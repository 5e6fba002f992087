"""Virtual sites: massless particles placed from the positions of others (OpenMM's definitions).

A 4-site water's charge site M, TIP5P's lone pairs and any ``openmm.VirtualSite`` are
particles with no mass whose position is a fixed function of their parents' positions.
Every OpenMM site kind is one formula here. With parents r_k and per-site weights::

    origin = sum_k wo_k r_k,    a = sum_k wx_k r_k,    b = sum_k wy_k r_k

    site = origin + l_1 e_1 + l_2 e_2 + l_3 e_3

where ``(e_1, e_2, e_3) = (a, b, a x b)`` for a plain frame and, for an orthonormal frame,
``e_1 = a/|a|``, ``e_3 = (a x b)/|a x b|``, ``e_2 = e_3 x e_1``. OpenMM's kinds map onto it:

- ``TwoParticleAverageSite`` / ``ThreeParticleAverageSite``: ``wo`` are the weights,
  ``l = 0``.
- ``OutOfPlaneSite`` (r_1 + w12 r_12 + w13 r_13 + wcross r_12 x r_13): ``wo = (1, 0, 0)``,
  ``wx = (-1, 1, 0)``, ``wy = (-1, 0, 1)``, ``l = (w12, w13, wcross)``, plain frame.
- ``LocalCoordinatesSite``: its origin, x and y weights and local position [nm],
  orthonormal frame.

Parents are used as they are, without a minimum image (as OpenMM does), so molecules must
be whole. A site may hang on other sites: sites are placed in dependency levels.

Forces: evaluate the energy at ``place(positions, sites)``; autodiff then moves each
site's force onto its parents exactly (the chain rule is OpenMM's force spreading) and
the site itself feels none. ``place`` is pure: ``jit``, ``vmap`` and ``grad`` go through it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError

__all__ = ["VirtualSites", "SiteDefinition", "average_site", "out_of_plane_site", "local_coordinates_site",
           "build_virtual_sites", "place", "site_parent_pairs"]


class SiteDefinition(NamedTuple):
    """One virtual site on the host (build it with the helpers below).

    Attributes:
        site: index of the massless site particle.
        parents: indices of the particles it is placed from.
        origin_weights, x_weights, y_weights: one weight per parent.
        local: local position (l_1, l_2, l_3) [nm, or 1/nm for an out-of-plane cross weight].
        orthonormal: True for an orthonormal local frame (``LocalCoordinatesSite``).
    """

    site: int
    parents: tuple
    origin_weights: tuple
    x_weights: tuple
    y_weights: tuple
    local: tuple = (0.0, 0.0, 0.0)
    orthonormal: bool = False


def average_site(site: int, parents: Sequence[int], weights: Sequence[float]) -> SiteDefinition:
    """A weighted average of 2 or 3 parents (OpenMM's Two/ThreeParticleAverageSite)."""
    zeros = (0.0,) * len(parents)
    return SiteDefinition(int(site), tuple(int(p) for p in parents), tuple(float(w) for w in weights), zeros, zeros)


def out_of_plane_site(site: int, parents: Sequence[int], w12: float, w13: float, wcross: float) -> SiteDefinition:
    """``r1 + w12 r12 + w13 r13 + wcross (r12 x r13)`` (OpenMM's OutOfPlaneSite; wcross [1/nm])."""
    return SiteDefinition(int(site), tuple(int(p) for p in parents), (1.0, 0.0, 0.0), (-1.0, 1.0, 0.0),
                          (-1.0, 0.0, 1.0), (float(w12), float(w13), float(wcross)), False)


def local_coordinates_site(site: int, parents: Sequence[int], origin_weights, x_weights, y_weights,
                           local) -> SiteDefinition:
    """A fixed position ``local`` [nm] in a local orthonormal frame (OpenMM's LocalCoordinatesSite)."""
    return SiteDefinition(int(site), tuple(int(p) for p in parents), tuple(map(float, origin_weights)),
                          tuple(map(float, x_weights)), tuple(map(float, y_weights)), tuple(map(float, local)), True)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["index", "parents", "origin_weights", "x_weights", "y_weights", "local", "orthonormal"],
    meta_fields=["levels"],
)
@dataclasses.dataclass(frozen=True)
class VirtualSites:
    """Every virtual site of a system as arrays (a pytree; build it with ``build_virtual_sites``).

    Attributes:
        index: (S,) int32 site particles, ordered by dependency level.
        parents: (S, K) int32 parent particles (unused slots: weight 0).
        origin_weights, x_weights, y_weights: (S, K) weights of the parents.
        local: (S, 3) local positions.
        orthonormal: (S,) bool, True where the frame is normalized (local coordinates).
        levels: static end offsets of the dependency levels in ``index`` (level 0 hangs
            on real particles only, level 1 on level-0 sites, ...); changing it recompiles.
    """

    index: jax.Array
    parents: jax.Array
    origin_weights: jax.Array
    x_weights: jax.Array
    y_weights: jax.Array
    local: jax.Array
    orthonormal: jax.Array
    levels: tuple = ()

    @property
    def n_sites(self) -> int:
        return int(np.asarray(self.index).shape[0])


def build_virtual_sites(definitions: Sequence[SiteDefinition], n_atoms: int, masses=None) -> VirtualSites | None:
    """Host-side arrays of ``definitions`` (None when there are none).

    Args:
        definitions: one ``SiteDefinition`` per site.
        n_atoms: number of particles.
        masses: optional (N,) masses [amu]; a site must be massless (it would otherwise
            be moved by the integrator as well as placed).

    Raises:
        InputError: an index out of range, a site defined twice, a site with mass, a
            site among its own (indirect) parents, or weights that do not match parents.
    """
    if not definitions:
        return None
    by_site = {}
    for d in definitions:
        k = len(d.parents)
        if not (len(d.origin_weights) == len(d.x_weights) == len(d.y_weights) == k) or len(d.local) != 3 or k < 1:
            raise InputError(f"virtual site {d.site}: {k} parents need as many origin, x and y weights and a "
                             "3-vector local position")
        for p in (d.site, *d.parents):
            if not 0 <= p < n_atoms:
                raise InputError(f"virtual site {d.site}: particle {p} is out of range (0..{n_atoms - 1})")
        if d.site in d.parents:
            raise InputError(f"virtual site {d.site} lists itself as a parent")
        if d.site in by_site:
            raise InputError(f"particle {d.site} is defined as a virtual site twice")
        if masses is not None and float(masses[d.site]) != 0.0:
            raise InputError(f"virtual site {d.site} has mass {float(masses[d.site])} amu; a virtual site must be "
                             "massless (set its mass to 0)")
        by_site[d.site] = d
    level = {}

    def depth(s, seen=()):
        if s not in by_site:
            return -1
        if s in seen:
            raise InputError(f"virtual sites {sorted(seen)} depend on each other in a cycle")
        if s not in level:
            level[s] = 1 + max(depth(p, seen + (s,)) for p in by_site[s].parents)
        return level[s]

    for s in by_site:
        depth(s)
    order = sorted(by_site, key=lambda s: (level[s], s))
    width = max(len(d.parents) for d in definitions)

    def padded(values, fill):
        return [list(v) + [fill] * (width - len(v)) for v in values]

    defs = [by_site[s] for s in order]
    counts = np.bincount([level[s] for s in order])
    return VirtualSites(
        index=np.array(order, np.int32),
        parents=np.array(padded([d.parents for d in defs], 0), np.int32),
        origin_weights=np.array(padded([d.origin_weights for d in defs], 0.0), np.float64),
        x_weights=np.array(padded([d.x_weights for d in defs], 0.0), np.float64),
        y_weights=np.array(padded([d.y_weights for d in defs], 0.0), np.float64),
        local=np.array([d.local for d in defs], np.float64),
        orthonormal=np.array([d.orthonormal for d in defs], bool),
        levels=tuple(int(c) for c in np.cumsum(counts)),
    )


def _normalized(v, use):
    # the norm is taken only where the frame is orthonormal; elsewhere 1, so no 0/0 (or its
    # gradient) arises for the zero axes of average sites
    n2 = jnp.where(use[:, None], jnp.sum(v * v, axis=-1, keepdims=True), 1.0)
    return jnp.where(use[:, None], v / jnp.sqrt(n2), v)


def _site_positions(positions, sites: VirtualSites, lo: int, hi: int):
    dtype = positions.dtype
    xp = positions[sites.parents[lo:hi]]                          # (S, K, 3)

    def combine(w):
        return jnp.sum(jnp.asarray(w[lo:hi], dtype)[:, :, None] * xp, axis=1)

    origin, a, b = combine(sites.origin_weights), combine(sites.x_weights), combine(sites.y_weights)
    ortho = sites.orthonormal[lo:hi]
    c = jnp.cross(a, b)
    e1 = _normalized(a, ortho)
    e3 = _normalized(c, ortho)
    e2 = jnp.where(ortho[:, None], jnp.cross(e3, e1), b)
    local = jnp.asarray(sites.local[lo:hi], dtype)
    return origin + local[:, 0:1] * e1 + local[:, 1:2] * e2 + local[:, 2:3] * e3


def place(positions, sites: VirtualSites | None):
    """Positions with every virtual site placed from its parents (OpenMM's computeVirtualSites).

    Args:
        positions: (N, 3) [nm]; the sites' own rows are ignored (overwritten).
        sites: the sites, or None (positions returned unchanged).

    Returns:
        (N, 3) positions [nm], same dtype. Gradients of a function of the result flow to
        the parents only (the sites' incoming rows have zero derivative).

    Example:
        >>> import numpy as np
        >>> s = build_virtual_sites([average_site(2, (0, 1), (0.5, 0.5))], 3)
        >>> x = place(np.array([[0.0, 0, 0], [1.0, 0, 0], [9.0, 9, 9]]), s)
        >>> [float(v) for v in x[2]]
        [0.5, 0.0, 0.0]
    """
    positions = jnp.asarray(positions)
    if sites is None:
        return positions
    lo = 0
    for hi in sites.levels:
        positions = positions.at[sites.index[lo:hi]].set(_site_positions(positions, sites, lo, hi))
        lo = hi
    return positions


def site_parent_pairs(sites: VirtualSites | None) -> np.ndarray:
    """(P, 2) host array of (site, parent) pairs with a nonzero weight (sites belong to their parents'
    molecule, e.g. for molecular scaling by a barostat)."""
    if sites is None:
        return np.zeros((0, 2), np.int32)
    used = (np.abs(np.asarray(sites.origin_weights)) + np.abs(np.asarray(sites.x_weights))
            + np.abs(np.asarray(sites.y_weights))) > 0
    s, k = np.nonzero(used)
    return np.stack([np.asarray(sites.index)[s], np.asarray(sites.parents)[s, k]], axis=1).astype(np.int32)
