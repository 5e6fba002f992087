"""Padding different systems to common shapes, so one compiled program steps them all.

A batch of molecules with different atom and term counts is stacked along a new
leading axis after every member is padded to the largest counts. Padding must
change nothing a member computes, so it is made of things that contribute
exactly zero, with finite derivatives:

- padding atoms (at least two per member, so padded terms have distinct ends)
  have mass 0 (never move, no kinetic energy, no degrees of freedom), charge 0,
  an all-zero Lennard-Jones type, generalized-Born radius 0 (absent from GB,
  see ``kernels.gb``) and sit far from the molecule and from each other;
- padded bonds, angles, torsions, 1-4 pairs and CMAP terms join padding atoms,
  with zero force constants, 1-4 scales and an all-zero CMAP grid;
- neighbor, exclusion and constraint tables are padded with their "empty" values
  (the padding index N, masks False).

Tables with a cutoff are rebuilt with the layout that tests every cluster pair,
which is exact for every member's box, and padding atoms are masked out of them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


from ..kernels.neighbors import every_cluster_capacity


#: padding atoms added to every member of a heterogeneous batch
MIN_PADDING_ATOMS = 2
#: distance of the padding atoms from the molecule, and between them [nm]
PADDING_OFFSET = 1000.0
PADDING_SPACING = 2.0


def padded_size(n_atoms) -> int:
    """Atoms per member of a heterogeneous batch of molecules with ``n_atoms`` atoms."""
    return int(max(n_atoms)) + MIN_PADDING_ATOMS


def _pad_rows(a, length, value):
    a = np.asarray(a)
    extra = length - a.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {a.shape[0]} rows to {length}")
    fill = np.full((extra,) + a.shape[1:], value, dtype=a.dtype)
    return np.concatenate([a, fill], axis=0)


def padding_positions(positions, n_total: int):
    """(n_total, 3) positions [nm]: the molecule's, then padding atoms far away on a line."""
    positions = np.asarray(positions)
    n = positions.shape[0]
    centre = positions.mean(axis=0) if n else np.zeros(3)
    extent = float(np.ptp(positions, axis=0).max()) if n else 0.0
    k = np.arange(n_total - n, dtype=positions.dtype)
    far = centre + np.stack([PADDING_OFFSET + extent + PADDING_SPACING * k, np.zeros_like(k), np.zeros_like(k)],
                            axis=-1)
    return np.concatenate([positions, far.astype(positions.dtype)], axis=0)


def pad_per_atom(a, n_total: int, value=0):
    """A per-atom array (N, ...) padded to ``n_total`` rows with ``value``."""
    return _pad_rows(a, n_total, value)


def pad_amber(params, terms, n_total: int, n_types: int, n_grids: int, counts: dict):
    """One member's ``AmberParams`` and ``AmberTerms`` padded to common shapes (host numpy).

    Args:
        params, terms: the member's parameters and topology (numpy or jax arrays).
        n_total: atoms per member after padding (>= N + 2).
        n_types: LJ types after padding (> every member's type count: the last is all zero).
        n_grids: CMAP grids after padding (> every member's: the last is all zero).
        counts: padded lengths of ``bond``, ``angle``, ``torsion``, ``pair14``, ``cmap``,
            ``exclusions``.

    Returns:
        ``(params, terms)`` with numpy leaves.
    """
    params = jax.tree_util.tree_map(np.asarray, params)
    terms = jax.tree_util.tree_map(np.asarray, terms)
    n = terms.atom_type.shape[0]
    if n_total < n + MIN_PADDING_ATOMS:
        raise ValueError(f"padding {n} atoms to {n_total} leaves fewer than {MIN_PADDING_ATOMS} padding atoms")
    p1, p2 = n, n + 1  # two distinct, far-apart padding atoms: padded terms have finite geometry
    t = params.lj_a.shape[0]
    lj_a = np.zeros((n_types, n_types), params.lj_a.dtype)
    lj_b = np.zeros((n_types, n_types), params.lj_b.dtype)
    lj_a[:t, :t], lj_b[:t, :t] = params.lj_a, params.lj_b
    grids = np.zeros((n_grids,) + tuple(params.cmap_grids.shape[1:] or (24, 24)), params.cmap_grids.dtype)
    if params.cmap_grids.shape[0]:
        grids[: params.cmap_grids.shape[0]] = params.cmap_grids
    padded_params = dataclasses.replace(
        params,
        charges=pad_per_atom(params.charges, n_total), lj_a=lj_a, lj_b=lj_b,
        bond_k=_pad_rows(params.bond_k, counts["bond"], 0), bond_r0=_pad_rows(params.bond_r0, counts["bond"], 0),
        angle_k=_pad_rows(params.angle_k, counts["angle"], 0),
        angle_theta0=_pad_rows(params.angle_theta0, counts["angle"], 0),
        torsion_k=_pad_rows(params.torsion_k, counts["torsion"], 0),
        torsion_phase=_pad_rows(params.torsion_phase, counts["torsion"], 0),
        coulomb14_scale=_pad_rows(params.coulomb14_scale, counts["pair14"], 0),
        lj14_scale=_pad_rows(params.lj14_scale, counts["pair14"], 0),
        cmap_grids=grids,
        gb_radii=pad_per_atom(params.gb_radii, n_total), gb_screen=pad_per_atom(params.gb_screen, n_total))

    def pad_idx(a, length, pattern):
        a = np.asarray(a).astype(np.int32).reshape(-1, len(pattern))
        fill = np.tile(np.asarray(pattern, np.int32), (length - a.shape[0], 1))
        return np.concatenate([a, fill], axis=0)

    type_counts = np.zeros(n_types, terms.type_counts.dtype)
    type_counts[:t] = terms.type_counts  # padding atoms are counted nowhere (dispersion correction)
    padded_terms = dataclasses.replace(
        terms,
        atom_type=pad_per_atom(terms.atom_type, n_total, n_types - 1),
        type_counts=type_counts,
        bond_idx=pad_idx(terms.bond_idx, counts["bond"], (p1, p2)),
        angle_idx=pad_idx(terms.angle_idx, counts["angle"], (p1, p2, p1)),
        torsion_idx=pad_idx(terms.torsion_idx, counts["torsion"], (p1, p2, p1, p2)),
        torsion_periodicity=_pad_rows(terms.torsion_periodicity, counts["torsion"], 1),
        pair14_idx=pad_idx(terms.pair14_idx, counts["pair14"], (p1, p2)),
        cmap_idx=pad_idx(terms.cmap_idx, counts["cmap"], (p1, p2, p1, p2, p1)),
        cmap_map=_pad_rows(terms.cmap_map, counts["cmap"], n_grids - 1),
        exclusions=pad_idx(terms.exclusions, counts["exclusions"], (p1, p2)))
    return padded_params, padded_terms


def amber_padding_sizes(members) -> dict:
    """Common padded sizes of a list of ``(params, terms)``: atoms, types, grids and term counts."""
    def most(f):
        return max(int(f(p, t)) for p, t in members)

    return {
        "n_total": padded_size([np.asarray(t.atom_type).shape[0] for _, t in members]),
        "n_types": most(lambda p, t: np.asarray(p.lj_a).shape[0]) + 1,
        "n_grids": most(lambda p, t: np.asarray(p.cmap_grids).shape[0]) + 1,
        "counts": {
            "bond": most(lambda p, t: np.asarray(t.bond_idx).shape[0]),
            "angle": most(lambda p, t: np.asarray(t.angle_idx).shape[0]),
            "torsion": most(lambda p, t: np.asarray(t.torsion_idx).shape[0]),
            "pair14": most(lambda p, t: np.asarray(t.pair14_idx).shape[0]),
            "cmap": most(lambda p, t: np.asarray(t.cmap_idx).shape[0]),
            "exclusions": most(lambda p, t: np.asarray(t.exclusions).shape[0]),
        },
    }


def pad_table(table, n_atoms: int, n_total: int, width: int):
    """An (N, K) index table padded with N -> (n_total, width) padded with n_total."""
    table = np.asarray(table)
    out = np.full((n_total, width), n_total, np.int32)
    body = np.where(table >= n_atoms, n_total, table).astype(np.int32)
    out[: table.shape[0], : table.shape[1]] = body
    return out


def pad_neighbors(nbrs, n_atoms: int, n_total: int, width: int, excl_width: int, positions):
    """One member's ``Neighbors`` padded to ``n_total`` atoms and ``width`` partners per row.

    Padding atoms get empty rows and appear in no row, so they pair with nothing in the
    table-driven terms. (Without a cutoff the all-pairs Lennard-Jones/Coulomb loop does
    meet them, at zero charge and zero LJ coefficients far away, which adds exactly
    zero.) Tables with a cutoff get the layout that tests every cluster pair
    (``grid=None``), which is exact for any member's box and positions, so members of
    different sizes and boxes share one compiled rebuild; ``mask_padding`` keeps the
    padding out of rebuilt tables.
    """
    changes = {}
    if not nbrs.dense:
        changes = {"grid": None, "cell_capacity": every_cluster_capacity(n_total)}
    return dataclasses.replace(
        nbrs, idx=jnp.asarray(pad_table(nbrs.idx, n_atoms, n_total, width)),
        exclusions=jnp.asarray(pad_table(nbrs.exclusions, n_atoms, n_total, excl_width)),
        reference_positions=jnp.asarray(positions, nbrs.reference_positions.dtype), **changes)


def mask_padding(nbrs, n_real):
    """A table with every entry of a padding atom (index >= ``n_real``) emptied (jit-able)."""
    n = nbrs.idx.shape[0]
    real_row = (jnp.arange(n) < n_real)[:, None]
    idx = jnp.where(real_row & (nbrs.idx < n_real), nbrs.idx, n)
    return dataclasses.replace(nbrs, idx=idx)


def pad_constraints(cons, n_water: int, n_pairs: int, padding_atoms: tuple[int, int]):
    """A ``Constraints`` set padded to ``n_water`` waters and ``n_pairs`` pairs (masks False)."""
    p1, p2 = padding_atoms
    water = np.asarray(cons.water).reshape(-1, 3)
    pairs = np.asarray(cons.pairs).reshape(-1, 2)
    nw, npairs = water.shape[0], pairs.shape[0]
    return dataclasses.replace(
        cons,
        water=jnp.asarray(np.concatenate([water, np.tile([[p1, p2, p2]], (n_water - nw, 1))]).astype(np.int32)),
        water_distances=jnp.asarray(_pad_rows(np.asarray(cons.water_distances).reshape(-1, 2), n_water, 0.1)),
        water_mask=jnp.asarray(_pad_rows(np.asarray(cons.water_mask), n_water, False)),
        pairs=jnp.asarray(np.concatenate([pairs, np.tile([[p1, p2]], (n_pairs - npairs, 1))]).astype(np.int32)),
        lengths=jnp.asarray(_pad_rows(np.asarray(cons.lengths), n_pairs, 0.1)),
        pair_mask=jnp.asarray(_pad_rows(np.asarray(cons.pair_mask), n_pairs, False)))


def stack(trees):
    """Stack equal-structure pytrees along a new leading axis (the member axis)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def unstack(tree, index: int):
    """Member ``index`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[index], tree)
