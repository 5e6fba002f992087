"""Hybrid ML/MM with mechanical embedding, as openmm-ml's ``MLPotential.createMixedSystem``.

A neural potential describes a selected set of atoms (the ML region: a ligand, optionally
pocket residues) and the Amber force field everything else:

- the neural model sees only the ML atoms and gives the ML-ML interactions;
- Amber keeps every MM-MM and ML-MM term (bonded terms that cross the boundary, ML-MM
  Coulomb and Lennard-Jones, generalized Born over all atoms, the dispersion correction);
- the ML region's internal MM terms are removed: bonds, angles, torsions and CMAP terms whose
  atoms are all ML, and the nonbonded pairs with both atoms ML (1-4 pairs included).

With the coupling ``lambda`` (openmm-ml's ``interpolate=True``; a traced parameter, so windows
vmap and ``dE/dlambda`` is a gradient)::

    E = E_MM + lambda * (E_ML - E_MM_internal)   [kJ/mol]

``lambda = 1`` is ML/MM, ``lambda = 0`` pure Amber (exactly: ``E_MM + 0``). ``E_MM_internal``
is exactly what removing the ML region's internal terms takes out of Amber, in the nonbonded
method's own pair form: plain Coulomb without a cutoff; the reaction-field form within the
cutoff with ``nonbonded='cutoff'``; with PME, C q_i q_j (erfc(alpha r) / r within the cutoff
+ erf(alpha r) / r), the direct-space term plus the reciprocal-space part that an OpenMM
exclusion subtracts. (openmm-ml's interpolation writes the internal Coulomb as plain 1/r for
every method; the two agree except with a reaction field, where this form keeps
``lambda = 0`` identical to the Amber model.)

The neural model's neighbor table is the all-pairs table of the ML region (L x (L - 1)
entries), built once and closed over, so ``neighbors`` is the Amber model's own table and the
model runs in ``diffmd.simulate``, ensembles and training code unchanged. It is meant for
ML regions of up to a few hundred atoms.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels import bonded, cmap, nonbonded as nb
from ..kernels.constants import COULOMB
from ..kernels.errors import InputError, UnsupportedError
from ..kernels.geometry import minimum_image
from ..kernels.neighbors import Neighbors, dense_neighbors, exclusion_table
from ..kernels.pme_direct import pme_exclusion_correction
from ..kernels.precision import cast_floats
from ..kernels.virtual_sites import place
from .amber import AmberEnergy, AmberParams

__all__ = ["MLMMEnergy", "MLMMParams", "mlmm_energy"]

#: keys of ``MLMMEnergy.components``
COMPONENT_NAMES = ("mm", "ml", "mm_internal")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["mm", "ml", "lambda_interpolate"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class MLMMParams:
    """Parameters of an ML/MM model (a pytree: every leaf is differentiable).

    Attributes:
        mm: the Amber parameters of the whole system (``AmberParams``).
        ml: the neural model's parameters (its flax variable dict).
        lambda_interpolate: scalar coupling, 1 = ML/MM, 0 = pure MM (openmm-ml's
            ``lambda_interpolate``).
    """

    mm: AmberParams
    ml: Any
    lambda_interpolate: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class MLMMEnergy:
    """Energy function of an ML/MM model: ``energy_fn(params, positions, box, neighbors)`` [kJ/mol].

    ``neighbors`` is the Amber model's table (``energy_fn.neighbor_list(positions, box)``; None
    without a cutoff). ``energy_fn.components(...)`` gives ``E_MM``, ``E_ML`` and ``E_MM_internal``
    separately.

    Attributes:
        mm_: the Amber energy function of the whole system.
        ml_: the neural energy function, built for the ML atoms alone, in ``ml_atoms`` order.
        ml_atoms: (L,) int32 indices of the ML atoms, ascending.
        ml_table_: the ML region's all-pairs table (L atoms, none excluded).
        bond_sel, angle_sel, torsion_sel, cmap_sel, pair14_sel: (k,) indices of the Amber
            terms whose atoms are all ML (the ones the ML model replaces).
        ml_pairs: (P, 2) ML-ML atom pairs (global indices, i < j) that Amber's nonbonded
            sum includes (not excluded).
    """

    mm_: AmberEnergy
    ml_: Any
    ml_atoms: np.ndarray
    ml_table_: Neighbors
    bond_sel: np.ndarray
    angle_sel: np.ndarray
    torsion_sel: np.ndarray
    cmap_sel: np.ndarray
    pair14_sel: np.ndarray
    ml_pairs: np.ndarray

    @property
    def n_atoms(self) -> int:
        return self.mm_.terms_.n_atoms

    @property
    def virtual_sites_(self):
        """The Amber model's virtual sites (placed by it; never in the ML region)."""
        return self.mm_.virtual_sites_

    def neighbor_list(self, positions, box=None, **kwargs) -> Neighbors:
        """The Amber model's neighbor table (host); ``kwargs`` as ``AmberEnergy.neighbor_list``."""
        return self.mm_.neighbor_list(positions, box, **kwargs)

    def __call__(self, params: MLMMParams, positions, box=None, neighbors: Neighbors | None = None):
        """Potential energy [kJ/mol] (the Amber model's accumulate dtype)."""
        p = self.components(params, positions, box, neighbors)
        lam = jnp.asarray(params.lambda_interpolate).astype(p["mm"].dtype)
        return p["mm"] + lam * (p["ml"] - p["mm_internal"])

    def components(self, params: MLMMParams, positions, box=None, neighbors: Neighbors | None = None) -> dict:
        """``{"mm": E_MM, "ml": E_ML, "mm_internal": E_MM_internal}`` [kJ/mol], accumulate dtype.

        ``E_MM`` is the Amber energy of the whole system, ``E_ML`` the neural model's energy of
        the ML atoms alone, ``E_MM_internal`` the Amber terms among the ML atoms (bonded terms,
        1-4 pairs and non-excluded pairs, all in the nonbonded method's form).
        """
        acc = self.mm_.precision.accumulate
        e_mm = self.mm_(params.mm, positions, box, neighbors).astype(acc)
        ml_box = None if (box is None or self.mm_.nonbonded == "nocutoff") else box
        x_ml = jnp.asarray(positions)[self.ml_atoms]
        e_ml = self.ml_(params.ml, x_ml, ml_box, self.ml_table_).astype(acc)
        return {"mm": e_mm, "ml": e_ml, "mm_internal": self.internal_energy(params.mm, positions, box)}

    def internal_energy(self, params: AmberParams, positions, box=None):
        """``E_MM_internal`` [kJ/mol]: the Amber terms among the ML atoms alone (accumulate dtype)."""
        mm, t = self.mm_, self.mm_.terms_
        prec = mm.precision
        acc = prec.accumulate
        positions = place(positions, mm.virtual_sites_)
        # bonded terms and 1-4 pairs in the accumulate dtype, as the Amber model computes them
        xb = jnp.asarray(positions).astype(acc)
        pb = cast_floats(params, acc)
        bbox = None if box is None else jnp.asarray(box).astype(acc)
        b, a, d = self.bond_sel, self.angle_sel, self.torsion_sel
        e = bonded.bond_energy(xb, bbox, t.bond_idx[b], pb.bond_k[b], pb.bond_r0[b])
        e = e + bonded.angle_energy(xb, bbox, t.angle_idx[a], pb.angle_k[a], pb.angle_theta0[a])
        e = e + bonded.torsion_energy(xb, bbox, t.torsion_idx[d], t.torsion_periodicity[d], pb.torsion_k[d],
                                      pb.torsion_phase[d])
        if len(self.cmap_sel):
            e = e + cmap.cmap_energy_from_grids(xb, bbox, t.cmap_idx[self.cmap_sel], t.cmap_map[self.cmap_sel],
                                                pb.cmap_grids).astype(acc)
        pair_box = None if mm.nonbonded == "nocutoff" else bbox
        s = self.pair14_sel
        c14, lj14 = nb.pair_energies(xb, pair_box, t.pair14_idx[s], pb.charges, t.atom_type, pb.lj_a, pb.lj_b,
                                     pb.coulomb14_scale[s], pb.lj14_scale[s], accumulate=acc)
        return e + c14 + lj14 + self._pair_energy(cast_floats(params, prec.compute), positions, box)

    def _pair_energy(self, p, positions, box):
        """The ML-ML non-excluded pairs' Coulomb + Lennard-Jones in the method's own form [kJ/mol]."""
        mm = self.mm_
        prec = mm.precision
        acc = prec.accumulate
        if len(self.ml_pairs) == 0:
            return jnp.zeros((), acc)
        x = jnp.asarray(positions).astype(prec.compute)
        pbox = None if (box is None or mm.nonbonded == "nocutoff") else jnp.asarray(box).astype(prec.compute)
        i, j = self.ml_pairs[:, 0], self.ml_pairs[:, 1]
        r2 = jnp.sum(minimum_image(x[j] - x[i], pbox) ** 2, axis=-1)
        within = jnp.ones(r2.shape, bool) if mm.cutoff is None or mm.nonbonded == "nocutoff" \
            else r2 < mm.cutoff * mm.cutoff
        inv_r2 = 1.0 / r2
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        ti, tj = mm.terms_.atom_type[i], mm.terms_.atom_type[j]
        e_lj = jnp.where(within, (p.lj_a[ti, tj] * inv_r6 - p.lj_b[ti, tj]) * inv_r6, 0.0)
        qq = p.charges[i] * p.charges[j]
        inv_r = jnp.sqrt(inv_r2)
        if mm.nonbonded == "pme":
            # direct space within the cutoff, plus the reciprocal part an exclusion would subtract
            direct = jnp.where(within, qq * jax.lax.erfc(mm.pme_alpha * jnp.sqrt(r2)) * inv_r, 0.0)
            e_c = COULOMB * jnp.sum(direct, dtype=acc) - pme_exclusion_correction(
                x, p.charges, pbox, self.ml_pairs, mm.pme_alpha, compute_dtype=prec.compute, accumulate_dtype=acc)
        else:
            form = inv_r
            if mm.nonbonded == "cutoff":
                k_rf, c_rf = nb.reaction_field_constants(mm.cutoff, mm.reaction_field_dielectric)
                form = inv_r + k_rf * r2 - c_rf
            e_c = COULOMB * jnp.sum(jnp.where(within, qq * form, 0.0), dtype=acc)
        return e_c + jnp.sum(e_lj, dtype=acc)


def _all_in(idx, is_ml: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``idx`` (k, m) whose atoms are all ML."""
    idx = np.asarray(idx)
    if idx.shape[0] == 0:
        return np.zeros(0, np.int32)
    return np.flatnonzero(np.all(is_ml[idx], axis=1)).astype(np.int32)


def _ml_indices(ml_atoms, n_atoms: int) -> np.ndarray:
    atoms = np.asarray(ml_atoms).reshape(-1)
    if atoms.size == 0:
        raise InputError("the ML selection is empty: pass the ML atoms' indices (0-based)")
    if not np.issubdtype(atoms.dtype, np.integer):
        raise InputError(f"ML atoms must be integer atom indices, got dtype {atoms.dtype}")
    if atoms.min() < 0 or atoms.max() >= n_atoms:
        raise InputError(f"ML atom indices must lie in [0, {n_atoms}), got {atoms.min()}..{atoms.max()}")
    if len(np.unique(atoms)) != len(atoms):
        raise InputError("ML atom indices repeat: pass each atom once")
    if np.any(np.diff(atoms) < 0):
        raise InputError("ML atom indices must be in ascending order (the neural model's atom order is the "
                         "system's): pass np.sort(ml_atoms) and build the neural model for those atoms")
    return atoms.astype(np.int32)


def _ml_pairs(ml: np.ndarray, exclusion_table_: np.ndarray) -> np.ndarray:
    """(P, 2) pairs i < j of ML atoms that are not excluded (global indices)."""
    n_ml = len(ml)
    local = np.full(exclusion_table_.shape[0] + 1, -1, np.int64)  # the padding value N maps to -1 too
    local[ml] = np.arange(n_ml)
    keep = np.triu(np.ones((n_ml, n_ml), bool), k=1)
    partners = local[exclusion_table_[ml]]  # (L, E) local index of each excluded partner, -1 if not ML
    rows = np.repeat(np.arange(n_ml)[:, None], partners.shape[1], axis=1)
    hit = partners >= 0
    keep[rows[hit], partners[hit]] = False
    keep[partners[hit], rows[hit]] = False
    i, j = np.nonzero(keep)
    return np.stack([ml[i], ml[j]], axis=1).astype(np.int32).reshape(-1, 2)


def mlmm_energy(mm_model, ml_model, ml_atoms, *, lambda_interpolate: float = 1.0):
    """Combine an Amber model of the whole system and a neural model of the ML atoms (host).

    Args:
        mm_model: an Amber ``(params, energy_fn)`` pair of the whole system
            (``System.energy_fn(...)``: any nonbonded method, implicit solvent and precision).
        ml_model: a neural ``(params, energy_fn)`` pair built for the ML atoms alone, in
            ascending index order (e.g. ``schnet(species_from_elements(elements[ml_atoms])[0])``
            or ``diffmd.train.load_model(folder, elements[ml_atoms])``); any model with an
            ``n_atoms`` attribute and the classical signature taking an all-pairs
            ``Neighbors`` table of the ML atoms.
        ml_atoms: (L,) ascending 0-based indices of the ML atoms.
        lambda_interpolate: initial coupling in the returned params (1 = ML/MM, 0 = pure MM).

    Returns:
        ``(MLMMParams, MLMMEnergy)``.

    Raises:
        InputError: a non-Amber ``mm_model``, a neural model built for another atom count, an
            empty, unsorted, repeated or out-of-range selection, a non-finite lambda.
        UnsupportedError: virtual sites in the ML region.

    Example:
        >>> system = diffmd.load_amber(*diffmd.data.cb7_b2())
        >>> guest = np.flatnonzero(np.asarray(system.topology.residue_names)[system.topology.residue_index] == "B2")
        >>> species, _ = species_from_elements(np.asarray(system.topology.elements)[guest])
        >>> params, energy_fn = mlmm_energy(system.energy_fn(implicit_solvent="obc2"),
        ...                                 schnet(species, cutoff=0.5), guest)
        >>> energy = energy_fn(params, system.positions)              # kJ/mol
        >>> mm_only = energy_fn(dataclasses.replace(params, lambda_interpolate=0.0), system.positions)
    """
    if not (isinstance(mm_model, tuple) and len(mm_model) == 2 and isinstance(mm_model[1], AmberEnergy)):
        raise InputError("mlmm_energy takes the Amber (params, energy_fn) pair of the whole system, e.g. "
                         "system.energy_fn(...)")
    if not (isinstance(ml_model, tuple) and len(ml_model) == 2 and callable(ml_model[1])):
        raise InputError("ml_model must be a neural (params, energy_fn) pair, e.g. schnet(species) or "
                         "diffmd.train.load_model(folder, elements[ml_atoms])")
    mm_params, mm = mm_model
    ml_params, ml = ml_model
    n = mm.terms_.n_atoms
    atoms = _ml_indices(ml_atoms, n)
    n_ml = getattr(ml, "n_atoms", None)
    if n_ml is None:
        raise InputError(f"the neural model ({type(ml).__name__}) has no n_atoms: build it with diffmd's schnet/painn "
                         "or load_model")
    if int(n_ml) != len(atoms):
        raise InputError(f"the neural model is built for {n_ml} atoms but the ML region has {len(atoms)}: build "
                         "(or load) it for the ML atoms' elements, e.g. load_model(folder, elements[ml_atoms])")
    lam = float(lambda_interpolate)
    if not np.isfinite(lam):
        raise InputError(f"lambda_interpolate must be a finite number (1 = ML/MM, 0 = MM), got {lambda_interpolate!r}")
    is_ml = np.zeros(n, bool)
    is_ml[atoms] = True
    if mm.virtual_sites_ is not None and np.any(is_ml[np.asarray(mm.virtual_sites_.index)]):
        raise UnsupportedError("virtual sites in the ML region are not supported (a neural model has no extra "
                               "particles): leave them out of the ML selection")
    t = mm.terms_
    none = exclusion_table(len(atoms), np.zeros((0, 2), np.int64))
    fn = MLMMEnergy(
        mm_=mm, ml_=ml, ml_atoms=atoms, ml_table_=dense_neighbors(len(atoms), none),
        bond_sel=_all_in(t.bond_idx, is_ml), angle_sel=_all_in(t.angle_idx, is_ml),
        torsion_sel=_all_in(t.torsion_idx, is_ml), cmap_sel=_all_in(np.asarray(t.cmap_idx), is_ml),
        pair14_sel=_all_in(t.pair14_idx, is_ml), ml_pairs=_ml_pairs(atoms, np.asarray(mm.exclusion_table_)))
    dtype = jnp.asarray(mm_params.charges).dtype
    return MLMMParams(mm=mm_params, ml=ml_params, lambda_interpolate=jnp.asarray(lam, dtype)), fn
