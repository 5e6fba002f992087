"""The classical Amber force field as a ``(params, energy_fn)`` pair.

``AmberParams`` holds every floating-point parameter (what ``jax.grad``
differentiates: charges, LJ tables, bonded constants, 1-4 scales, CMAP grids).
``AmberTerms`` holds integer topology (which atoms each term couples) and is
closed over by the energy function; its arrays carry no gradient.

Energies follow OpenMM's System built by ``AmberPrmtopFile.createSystem`` for
the same settings, term by term.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels import bonded, cmap, gb, nonbonded as nb, pme as pme_kernel
from ..kernels.errors import InputError
from ..kernels.geometry import box_volume, check_cutoff_fits
from ..kernels.neighbors import Neighbors, allocate_neighbors, dense_neighbors, exclusion_table
from ..kernels.precision import Precision, cast_floats, check_x64, resolve_precision
from ..kernels.virtual_sites import VirtualSites, place

NonbondedMethod = Literal["nocutoff", "cutoff", "pme"]
NONBONDED_METHODS = ("nocutoff", "cutoff", "pme")


def _dataclass_pytree(cls):
    fields = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])


@_dataclass_pytree
@dataclasses.dataclass(frozen=True)
class AmberParams:
    """Differentiable parameters of an Amber-style force field.

    Attributes:
        charges: (N,) partial charges [e].
        lj_a: (T, T) Lennard-Jones A coefficients [kJ/mol nm^12].
        lj_b: (T, T) Lennard-Jones B coefficients [kJ/mol nm^6].
        bond_k: (B,) [kJ/mol/nm^2]; bond_r0: (B,) [nm].
        angle_k: (A,) [kJ/mol/rad^2]; angle_theta0: (A,) [rad].
        torsion_k: (D,) [kJ/mol]; torsion_phase: (D,) [rad].
        coulomb14_scale: (P,) factor on q_i q_j of 1-4 pairs (1/SCEE).
        lj14_scale: (P,) factor on A, B of 1-4 pairs (1/SCNB).
        cmap_grids: (M, S, S) CMAP energy grids [kJ/mol] in OpenMM's convention.
        gb_radii: (N,) generalized-Born intrinsic radii [nm].
        gb_screen: (N,) generalized-Born screening factors.
    """

    charges: jax.Array
    lj_a: jax.Array
    lj_b: jax.Array
    bond_k: jax.Array
    bond_r0: jax.Array
    angle_k: jax.Array
    angle_theta0: jax.Array
    torsion_k: jax.Array
    torsion_phase: jax.Array
    coulomb14_scale: jax.Array
    lj14_scale: jax.Array
    cmap_grids: jax.Array
    gb_radii: jax.Array
    gb_screen: jax.Array


@_dataclass_pytree
@dataclasses.dataclass(frozen=True)
class AmberTerms:
    """Integer topology of the force-field terms (no gradients flow here).

    Attributes:
        atom_type: (N,) LJ type of each atom.
        type_counts: (T,) atoms per LJ type (for the dispersion correction).
        bond_idx: (B, 2); angle_idx: (A, 3); torsion_idx: (D, 4);
        torsion_periodicity: (D,); pair14_idx: (P, 2);
        cmap_idx: (C, 5) five atoms of two consecutive torsions; cmap_map: (C,).
        exclusions: (X, 2) every pair left out of the nonbonded sum
            (1-2, 1-3 and 1-4 pairs).
    """

    atom_type: jax.Array
    type_counts: jax.Array
    bond_idx: jax.Array
    angle_idx: jax.Array
    torsion_idx: jax.Array
    torsion_periodicity: jax.Array
    pair14_idx: jax.Array
    cmap_idx: jax.Array
    cmap_map: jax.Array
    exclusions: jax.Array

    @property
    def n_atoms(self) -> int:
        return int(self.atom_type.shape[0])


TERM_NAMES = ("bond", "angle", "torsion", "cmap", "coulomb", "lennard_jones", "coulomb14", "lennard_jones14",
              "dispersion_correction", "coulomb_reciprocal", "generalized_born", "surface_area")
IMPLICIT_SOLVENTS = ("obc2", "obc1", "hct")


@dataclasses.dataclass(frozen=True, eq=False)
class AmberEnergy:
    """Energy function of an Amber force field for fixed settings.

    Call it as ``energy_fn(params, positions, box=None, neighbors=None)`` to get
    the potential energy [kJ/mol]; ``energy_fn.terms(...)`` gives the per-term
    breakdown (``TERM_NAMES``); ``energy_fn.neighbor_list(positions, box)``
    allocates the neighbor table that cutoff methods need (without a cutoff the
    all-pairs table is built once and used when ``neighbors`` is None).

    Attributes:
        terms_: the integer topology (closed over, constant under jit).
        nonbonded: ``"nocutoff"``, ``"cutoff"`` or ``"pme"``.
        cutoff: nonbonded cutoff [nm] (None without one).
        precision: the resolved precision policy.
        reaction_field_dielectric: dielectric constant beyond the cutoff.
        use_dispersion_correction: add OpenMM's long-range LJ correction
            (periodic cutoffs only).
        skin: default neighbor-list skin [nm].
        implicit_solvent: None or a generalized-Born model (``"obc2"``, ``"obc1"``, ``"hct"``).
        pme_alpha: Ewald splitting parameter [1/nm] (PME only).
        pme_grid: PME grid dimensions (static; PME only).
        solute_dielectric, solvent_dielectric: GB dielectrics (OpenMM's 1.0 and 78.5).
        surface_tension: ACE non-polar coefficient [kJ/mol/nm^2] (0 switches it off).
        virtual_sites_: massless sites placed from their parents before every evaluation
            (``kernels.virtual_sites``), or None; their forces land on the parents.
    """

    terms_: AmberTerms
    nonbonded: str
    cutoff: float | None
    precision: Precision
    reaction_field_dielectric: float
    use_dispersion_correction: bool
    skin: float
    exclusion_table_: np.ndarray
    implicit_solvent: str | None = None
    solute_dielectric: float = 1.0
    solvent_dielectric: float = 78.5
    surface_tension: float = gb.SURFACE_TENSION
    pme_alpha: float | None = None
    pme_grid: tuple | None = None
    virtual_sites_: VirtualSites | None = None
    _dense: list = dataclasses.field(default_factory=list, repr=False)

    # -- neighbor tables ---------------------------------------------------
    def neighbor_list(self, positions, box=None, skin: float | None = None, **kwargs) -> Neighbors:
        """Allocate the neighbor table for these settings on the host.

        Args:
            positions: (N, 3) [nm].
            box: (3, 3) [nm] or None.
            skin: list skin [nm] (default ``self.skin``).
            kwargs: passed to ``allocate_neighbors`` (``margin``, ``capacity``).
        """
        if self.nonbonded == "nocutoff":
            return self._dense_table()
        skin = self.skin if skin is None else skin
        box = None if box is None else np.asarray(box)
        if self.virtual_sites_ is not None:
            positions = place(np.asarray(positions), self.virtual_sites_)
        return allocate_neighbors(np.asarray(positions), box, self.exclusion_table_, self.cutoff, skin, **kwargs)

    def _dense_table(self) -> Neighbors:
        n = self.terms_.n_atoms
        if n * n * 4 > 2**31:
            raise InputError(
                f"nonbonded='nocutoff' on {n} atoms needs an all-pairs table of {n * n * 4 / 2**30:.1f} GiB; "
                "use nonbonded='cutoff' (or 'pme' for periodic systems)")
        if not self._dense:
            # built once, on the host, even when first asked for inside jit (no tracer may leak into the cache)
            with jax.ensure_compile_time_eval():
                self._dense.append(dense_neighbors(self.terms_.n_atoms, self.exclusion_table_))
        return self._dense[0]

    # -- energies ----------------------------------------------------------
    def terms(self, params: AmberParams, positions, box=None, neighbors: Neighbors | None = None) -> dict:
        """Per-term energies [kJ/mol] (keys ``TERM_NAMES``), in the accumulate dtype."""
        prec = self.precision
        check_x64(prec, built=True)  # a float64 policy must not run in float32 when x64 was switched off
        t = self.terms_
        p = cast_floats(params, prec.compute)
        # sites from their parents, so that autodiff spreads the sites' forces onto the parents
        positions = place(positions, self.virtual_sites_)
        x = jnp.asarray(positions).astype(prec.compute)
        if box is not None:
            box = jnp.asarray(box).astype(prec.compute)
        if self.nonbonded != "nocutoff" and box is None and self.nonbonded == "pme":
            raise InputError("nonbonded='pme' needs a periodic box: pass box=(3, 3) box vectors [nm]")
        if neighbors is None:
            if self.nonbonded != "nocutoff":
                raise InputError(
                    f"nonbonded={self.nonbonded!r} needs a neighbor table: "
                    "neighbors = energy_fn.neighbor_list(positions, box)"
                )
            neighbors = self._dense_table()
        acc = prec.accumulate
        out = {}
        # Bonded terms are O(N) and stiff: in mixed precision they run in the
        # accumulate dtype, since float32 coordinates far from the origin lose
        # digits in r_j - r_i that a 3e5 kJ/mol/nm^2 bond turns into force error.
        xb = jnp.asarray(positions).astype(acc)
        pb = cast_floats(params, acc)
        bbox = None if box is None else box.astype(acc)
        out["bond"] = bonded.bond_energy(xb, bbox, t.bond_idx, pb.bond_k, pb.bond_r0)
        out["angle"] = bonded.angle_energy(xb, bbox, t.angle_idx, pb.angle_k, pb.angle_theta0)
        out["torsion"] = bonded.torsion_energy(xb, bbox, t.torsion_idx, t.torsion_periodicity, pb.torsion_k,
                                               pb.torsion_phase)
        out["cmap"] = self._cmap(pb, xb, bbox).astype(acc)
        if self.nonbonded == "cutoff":
            k_rf, c_rf = nb.reaction_field_constants(self.cutoff, self.reaction_field_dielectric)
        else:
            k_rf = c_rf = 0.0
        pme = self.nonbonded == "pme"
        dense = self.nonbonded == "nocutoff"  # all pairs: contiguous rows beat gathering a table
        # one pass over the table for LJ and Coulomb (PME: its erfc direct space)
        e_c, e_lj = nb.table_energies(x, None if dense else box, neighbors.exclusions if dense else neighbors.idx,
                                      p.charges, t.atom_type, p.lj_a, p.lj_b, cutoff=self.cutoff, k_rf=k_rf,
                                      c_rf=c_rf, accumulate=acc, dense=dense,
                                      ewald_alpha=self.pme_alpha if pme else None)
        out["lennard_jones"] = e_lj
        if pme:
            kw = {"compute_dtype": prec.compute, "accumulate_dtype": acc}
            out["coulomb"] = (e_c + pme_kernel.pme_self_energy(p.charges, self.pme_alpha, accumulate_dtype=acc)
                              + pme_kernel.pme_exclusion_correction(x, p.charges, box, t.exclusions,
                                                                    self.pme_alpha, **kw)
                              + pme_kernel.pme_neutralizing_energy(p.charges, box, self.pme_alpha,
                                                                   accumulate_dtype=acc))
            out["coulomb_reciprocal"] = pme_kernel.pme_reciprocal_energy(x, p.charges, box, self.pme_alpha,
                                                                         self.pme_grid, **kw)
        else:
            out["coulomb"] = e_c
            out["coulomb_reciprocal"] = jnp.zeros((), acc)
        pair_box = box if self.nonbonded != "nocutoff" else None
        out["coulomb14"], out["lennard_jones14"] = nb.pair_energies(
            xb, None if pair_box is None else bbox, t.pair14_idx, pb.charges, t.atom_type, pb.lj_a, pb.lj_b,
            pb.coulomb14_scale, pb.lj14_scale, accumulate=acc)
        if self.use_dispersion_correction and self.nonbonded != "nocutoff" and box is not None:
            out["dispersion_correction"] = nb.dispersion_correction(
                t.type_counts.astype(acc), p.lj_a.astype(acc), p.lj_b.astype(acc), self.cutoff,
                box_volume(box.astype(acc)))
        else:
            out["dispersion_correction"] = jnp.zeros((), acc)
        out["generalized_born"], out["surface_area"] = self._implicit(p, x, box, neighbors)
        return out

    def _implicit(self, p, x, box, neighbors):
        acc = self.precision.accumulate
        if self.implicit_solvent is None:
            return jnp.zeros((), acc), jnp.zeros((), acc)
        # GB couples every pair, bonded ones too: the table's partners plus the
        # excluded partners it left out (all within bonding distance)
        if neighbors.dense:
            gb_idx = None  # all pairs, read as contiguous rows: no (N, N) index table is gathered through
        else:
            gb_idx = jnp.concatenate([neighbors.idx, neighbors.exclusions.astype(neighbors.idx.dtype)], axis=1)
        periodic_box = box if self.nonbonded != "nocutoff" else None
        return gb.obc_energy(x, p.charges, p.gb_radii, p.gb_screen, gb_idx, box=periodic_box, cutoff=self.cutoff,
                             solute_dielectric=self.solute_dielectric, solvent_dielectric=self.solvent_dielectric,
                             surface_tension=self.surface_tension, model=self.implicit_solvent, return_parts=True,
                             compute_dtype=self.precision.compute, accumulate_dtype=acc)

    def _cmap(self, p, x, box):
        if self.terms_.cmap_idx.shape[0] == 0:
            return jnp.zeros((), x.dtype)
        return cmap.cmap_energy_from_grids(x, box, self.terms_.cmap_idx, self.terms_.cmap_map, p.cmap_grids)

    def __call__(self, params: AmberParams, positions, box=None, neighbors: Neighbors | None = None):
        """Potential energy [kJ/mol] (accumulate dtype)."""
        terms = self.terms(params, positions, box, neighbors)
        return functools.reduce(jnp.add, terms.values())


def amber_energy(params: AmberParams, terms: AmberTerms, *, nonbonded: str = "nocutoff", cutoff: float | None = 1.0,
                 precision: str = "double", box=None, reaction_field_dielectric: float = 78.3,
                 use_dispersion_correction: bool = True, skin: float = 0.1, implicit_solvent: str | None = None,
                 solute_dielectric: float = 1.0, solvent_dielectric: float = 78.5,
                 surface_tension: float = gb.SURFACE_TENSION, ewald_error_tolerance: float = 5e-4,
                 pme_alpha: float | None = None, pme_grid=None, virtual_sites: VirtualSites | None = None):
    """Build ``(params, energy_fn)`` for an Amber force field (validated on the host).

    Args:
        params: host parameters (numpy float64).
        terms: host integer topology.
        nonbonded: ``"nocutoff"`` (all pairs, plain Coulomb), ``"cutoff"``
            (reaction field beyond ``cutoff``, periodic when a box is used), or
            ``"pme"``.
        cutoff: nonbonded cutoff [nm] (ignored for ``"nocutoff"``).
        precision: ``"double"``, ``"mixed"`` or ``"single"``.
        box: (3, 3) box [nm] used to check that the cutoff fits (optional).
        reaction_field_dielectric: OpenMM's default 78.3.
        use_dispersion_correction: OpenMM's default True (periodic cutoffs).
        skin: neighbor-list skin [nm].
        implicit_solvent: None, ``"obc2"`` (Amber igb=5), ``"obc1"`` or ``"hct"``.
        solute_dielectric, solvent_dielectric: generalized-Born dielectrics.
        surface_tension: ACE surface-area coefficient [kJ/mol/nm^2]; 0 switches it off.
        ewald_error_tolerance: PME accuracy; alpha and the grid follow from it
            exactly as OpenMM chooses them (default 5e-4, OpenMM's).
        pme_alpha, pme_grid: override the Ewald parameter [1/nm] and grid.
        virtual_sites: massless sites (``kernels.virtual_sites.VirtualSites``) the energy
            places from their parents before every evaluation, or None.

    Returns:
        ``(params, energy_fn)`` with params cast to the policy's compute dtype.
    """
    if nonbonded not in NONBONDED_METHODS:
        raise InputError(f"unknown nonbonded method {nonbonded!r}: choose one of {', '.join(NONBONDED_METHODS)}")
    if implicit_solvent is not None and implicit_solvent not in IMPLICIT_SOLVENTS:
        raise InputError(f"unknown implicit solvent {implicit_solvent!r}: choose None or one of "
                         f"{', '.join(IMPLICIT_SOLVENTS)}")
    if implicit_solvent is not None and not np.any(np.asarray(params.gb_radii) > 0):
        raise InputError("implicit solvent needs generalized-Born radii, but the system has none (prmtop without "
                         "%FLAG RADII?); re-create it with tleap's 'set default PBradii mbondi2'")
    prec = resolve_precision(precision)
    if nonbonded != "nocutoff":
        if cutoff is None or not np.isfinite(cutoff) or cutoff <= 0:
            raise InputError(f"nonbonded={nonbonded!r} needs a positive cutoff [nm], got {cutoff!r}")
        check_cutoff_fits(box, float(cutoff))
    if nonbonded == "pme":
        if box is None:
            raise InputError("nonbonded='pme' needs a periodic box; the system has none")
        if implicit_solvent is not None:
            raise InputError("implicit solvent and PME do not combine: use nonbonded='nocutoff' or 'cutoff' with GB")
        pme_alpha, pme_grid = pme_kernel.pme_parameters(box, float(cutoff), ewald_error_tolerance, alpha=pme_alpha,
                                                        grid=pme_grid)
    n_atoms = int(np.asarray(terms.atom_type).shape[0])
    excl = exclusion_table(n_atoms, np.asarray(terms.exclusions))
    fn = AmberEnergy(
        terms_=jax.tree_util.tree_map(jnp.asarray, terms),
        nonbonded=nonbonded,
        cutoff=None if nonbonded == "nocutoff" else float(cutoff),
        precision=prec,
        reaction_field_dielectric=float(reaction_field_dielectric),
        use_dispersion_correction=bool(use_dispersion_correction),
        skin=float(skin),
        exclusion_table_=excl,
        implicit_solvent=implicit_solvent,
        solute_dielectric=float(solute_dielectric),
        solvent_dielectric=float(solvent_dielectric),
        surface_tension=float(surface_tension),
        pme_alpha=None if nonbonded != "pme" else float(pme_alpha),
        pme_grid=None if nonbonded != "pme" else tuple(int(g) for g in pme_grid),
        virtual_sites_=None if virtual_sites is None else jax.tree_util.tree_map(jnp.asarray, virtual_sites),
    )
    return cast_floats(params, prec.compute if prec.name != "mixed" else prec.accumulate), fn
