"""Alchemical decoupling of a ligand: the Amber model with lambda_sterics and lambda_electrostatics.

``alchemical_energy(amber_model, ligand_atoms)`` wraps an Amber ``(params, energy_fn)``
pair into ``(AlchemicalParams, AlchemicalEnergy)`` with the same call signature. The two
couplings are traced parameters (``params.lambda_sterics``, ``params.lambda_electrostatics``,
1 = fully interacting, 0 = decoupled), so windows ``vmap`` over them and ``jax.grad`` gives
dU/dlambda. Energies equal openmmtools' ``AbsoluteAlchemicalFactory`` system (default
factory; ``AlchemicalRegion(alchemical_atoms=ligand)``) at the same lambdas:

- Sterics: ligand-environment Lennard-Jones is Beutler softcore (``kernels.softcore``,
  alpha 0.5, a = b = 1, c = 6) at lambda_sterics; with a periodic cutoff and the dispersion
  correction on, its long-range tail follows lambda too (as OpenMM's long-range correction
  of openmmtools' ``CustomNonbondedForce`` does).
- Electrostatics: ligand charges scale linearly, q -> lambda_electrostatics q, in every
  ligand-environment term: plain Coulomb (no cutoff), reaction field (the shifted form of
  the reference system, i.e. openmmtools' ``alchemical_rf_treatment='shifted'``), PME (all
  of it: direct, reciprocal, the exclusion and self terms and the charged-system term are
  those of the scaled charges, openmmtools' ``alchemical_pme_treatment='exact'``) and GB
  (a decoupled atom neither polarizes nor descreens, ``kernels.gb_scaled``).

``mode`` sets what happens inside the ligand:

- ``"decouple"`` (default): intramolecular nonbonded interactions stay at full strength,
  so lambda = 0 is the ligand in vacuum beside the environment (openmmtools'
  ``annihilate_electrostatics=False, annihilate_sterics=False``). With PME, whose
  scaled reciprocal sum couples the ligand to itself as lambda^2, the missing
  (1 - lambda^2) of the intramolecular Coulomb energy is added back as plain Coulomb,
  so the lambda = 0 state is again the vacuum ligand (openmmtools cannot decouple with
  exact PME). The ligand's own GB solvation is switched off with its charges in every mode.
- ``"annihilate"``: intramolecular interactions are switched off too: Lennard-Jones
  (and 1-4 Lennard-Jones) softcore at lambda_sterics, Coulomb and 1-4 Coulomb linearly in
  lambda_electrostatics (as lambda^2 for non-bonded pairs with PME, where the charges
  themselves are scaled), as openmmtools with ``annihilate_electrostatics=True,
  annihilate_sterics=True``.

How it is computed: an inner Amber model evaluates everything but the ligand's Lennard-Jones
(ligand atoms get an extra all-zero LJ type) with the ligand charges scaled, and implicit
solvent off; the ligand's pairs with every atom then add softcore Lennard-Jones, the
intramolecular Coulomb corrections of the mode, and the ligand's 1-4 Lennard-Jones, over an
(L, N) block of pairs (no neighbor table needed: L ligand atoms is small); GB runs with
per-atom weights. The ligand must be a separate molecule (no bond to the environment).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels import nonbonded as nb
from ..kernels.constants import COULOMB
from ..kernels.errors import InputError, UnsupportedError
from ..kernels.gb_scaled import scaled_obc_energy
from ..kernels.geometry import box_volume, minimum_image
from ..kernels.neighbors import Neighbors
from ..kernels.precision import cast_floats
from ..kernels.softcore import SOFTCORE_ALPHA, sigma6_epsilon, softcore_lennard_jones, softcore_tail
from ..kernels.virtual_sites import place
from .amber import AmberEnergy, AmberParams

__all__ = ["AlchemicalParams", "AlchemicalEnergy", "alchemical_energy", "MODES", "ALCHEMICAL_TERMS"]

MODES = ("decouple", "annihilate")
#: terms the alchemical model adds to the Amber model's ``TERM_NAMES``
ALCHEMICAL_TERMS = ("ligand_lennard_jones", "ligand_coulomb", "ligand_lennard_jones14", "ligand_coulomb14",
                    "ligand_dispersion_correction")
_OUTSIDE, _ENVIRONMENT, _INTRAMOLECULAR = 0, 1, 2  # kinds of (ligand atom, atom) pairs


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["amber", "lambda_sterics", "lambda_electrostatics"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class AlchemicalParams:
    """Parameters of an alchemical model (every leaf differentiable).

    Attributes:
        amber: the Amber force-field parameters (charges, LJ tables, ...), unscaled.
        lambda_sterics: scalar coupling of the ligand's Lennard-Jones, 0 to 1.
        lambda_electrostatics: scalar coupling of the ligand's charges, 0 to 1.
    """

    amber: AmberParams
    lambda_sterics: jax.Array
    lambda_electrostatics: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["amber_", "ligand", "is_ligand", "atom_type", "pair_kind", "pair14", "environment_type_counts"],
    meta_fields=["mode", "softcore_alpha", "implicit_solvent"])
@dataclasses.dataclass(frozen=True, eq=False)  # hashable by identity: jax.jit(energy_fn) works
class AlchemicalEnergy:
    """Energy of a system with an alchemically coupled ligand [kJ/mol].

    Call as ``energy_fn(params, positions, box=None, neighbors=None)`` with
    ``AlchemicalParams``; ``terms(...)`` gives the breakdown (the Amber ``TERM_NAMES`` plus
    ``ALCHEMICAL_TERMS``), ``neighbor_list(positions, box)`` the Amber model's table.

    Attributes:
        amber_: the inner Amber model (ligand LJ moved to a zero type, no implicit solvent),
            with the wrapped model's settings (nonbonded method, cutoff, precision, GB ...).
        ligand: (L,) ligand atom indices.
        is_ligand: (N,) bool.
        atom_type: (N,) the atoms' own LJ types.
        pair_kind: (L, N) int8: 1 ligand-environment pair, 2 intramolecular non-excluded pair
            (each once), 0 neither (self, excluded pairs, the other half of the ligand pairs).
        pair14: (P,) indices of the ligand's 1-4 pairs in the Amber model's pair list.
        environment_type_counts: (T,) environment atoms per LJ type (dispersion tails).
        mode: ``"decouple"`` or ``"annihilate"`` (static).
        softcore_alpha: softcore alpha (static).
        implicit_solvent: None, or the wrapped model's GB settings as a tuple of
            (name, value) pairs for ``scaled_obc_energy`` (static).
    """

    amber_: AmberEnergy
    ligand: jax.Array
    is_ligand: jax.Array
    atom_type: jax.Array
    pair_kind: jax.Array
    pair14: jax.Array
    environment_type_counts: jax.Array
    mode: str
    softcore_alpha: float
    implicit_solvent: tuple | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.is_ligand.shape[0])

    def neighbor_list(self, positions, box=None, **kwargs) -> Neighbors:
        """The Amber model's neighbor table (host); ``kwargs`` as ``AmberEnergy.neighbor_list``."""
        return self.amber_.neighbor_list(positions, box, **kwargs)

    def __call__(self, params: AlchemicalParams, positions, box=None, neighbors: Neighbors | None = None):
        """Potential energy [kJ/mol] (accumulate dtype)."""
        return functools.reduce(jnp.add, self.terms(params, positions, box, neighbors).values())

    def terms(self, params: AlchemicalParams, positions, box=None, neighbors: Neighbors | None = None) -> dict:
        """Per-term energies [kJ/mol]: the inner Amber terms, GB with weights, and ``ALCHEMICAL_TERMS``."""
        inner = self.amber_
        prec = inner.precision
        lam_s = jnp.asarray(params.lambda_sterics, prec.compute)
        lam_e = jnp.asarray(params.lambda_electrostatics, prec.compute)
        p = params.amber
        scale = jnp.where(self.is_ligand, jnp.asarray(params.lambda_electrostatics, p.charges.dtype), 1.0)
        zero_type = ((0, 1), (0, 1))  # the ligand's extra LJ type: A = B = 0 with everyone
        inner_params = dataclasses.replace(p, charges=p.charges * scale, lj_a=jnp.pad(p.lj_a, zero_type),
                                           lj_b=jnp.pad(p.lj_b, zero_type))
        if neighbors is None and inner.nonbonded == "nocutoff":
            neighbors = inner.neighbor_list(positions)
        out = dict(inner.terms(inner_params, positions, box, neighbors))
        x = jnp.asarray(place(positions, inner.virtual_sites_)).astype(prec.compute)
        pbox = None if (box is None or inner.nonbonded == "nocutoff") else jnp.asarray(box).astype(prec.compute)
        pc = cast_floats(p, prec.compute)
        out.update(self._ligand_pairs(pc, x, pbox, lam_s, lam_e))
        out.update(self._ligand14(cast_floats(p, prec.accumulate), x.astype(prec.accumulate),
                                  None if pbox is None else pbox.astype(prec.accumulate), lam_s, lam_e))
        out["ligand_dispersion_correction"] = self._dispersion_tail(pc, box, lam_s)
        if self.implicit_solvent is not None:
            out["generalized_born"], out["surface_area"] = self._implicit(pc, x, pbox, neighbors, lam_e)
        return out

    # -- pieces -------------------------------------------------------------------------------
    def _intramolecular_lambda(self, lam_s):
        return lam_s if self.mode == "annihilate" else jnp.ones_like(lam_s)

    def _coulomb_coefficients(self, lam_e):
        """(c_pairs, c_14): what multiplies the full intramolecular Coulomb of non-bonded and 1-4 pairs,
        minus the lambda^2 the inner model's scaled charges already give them."""
        target = lam_e if self.mode == "annihilate" else jnp.ones_like(lam_e)
        if self.amber_.nonbonded == "pme" and self.mode == "annihilate":
            pairs = jnp.zeros_like(lam_e)  # exact PME: the scaled charges are the whole story
        else:
            pairs = target - lam_e * lam_e
        return pairs, target - lam_e * lam_e

    def _ligand_pairs(self, p, x, box, lam_s, lam_e):
        """Ligand-everyone Lennard-Jones (softcore) and the intramolecular Coulomb correction."""
        inner = self.amber_
        acc = inner.precision.accumulate
        dr = minimum_image(x[None, :, :] - x[self.ligand][:, None, :], box)
        r2 = jnp.sum(dr * dr, axis=-1)
        kind = self.pair_kind
        within = kind != _OUTSIDE
        if inner.cutoff is not None:
            within = within & (r2 < inner.cutoff * inner.cutoff)
        r2s = jnp.where(within, r2, 1.0)
        s6, eps = sigma6_epsilon(p.lj_a[self.atom_type[self.ligand]][:, self.atom_type],
                                 p.lj_b[self.atom_type[self.ligand]][:, self.atom_type])
        lam = jnp.where(kind == _ENVIRONMENT, lam_s, self._intramolecular_lambda(lam_s))
        e_lj = jnp.where(within, softcore_lennard_jones(r2s, s6, eps, lam, self.softcore_alpha), 0.0)
        # intramolecular Coulomb in the method's own pair form (vacuum Coulomb for PME's decoupling)
        c_pairs, _ = self._coulomb_coefficients(lam_e)
        intra = kind == _INTRAMOLECULAR
        if inner.nonbonded == "pme":
            intra_r2 = jnp.where(intra, r2, 1.0)
            form = 1.0 / jnp.sqrt(intra_r2)
        else:
            intra = intra & within
            inv_r = 1.0 / jnp.sqrt(r2s)
            if inner.nonbonded == "cutoff":
                k_rf, c_rf = nb.reaction_field_constants(inner.cutoff, inner.reaction_field_dielectric)
                form = inv_r + k_rf * r2s - c_rf
            else:
                form = inv_r
        qq = p.charges[self.ligand][:, None] * p.charges[None, :]
        e_c = COULOMB * c_pairs * jnp.sum(jnp.where(intra, qq * form, 0.0), dtype=acc)
        return {"ligand_lennard_jones": jnp.sum(e_lj, dtype=acc), "ligand_coulomb": e_c}

    def _ligand14(self, p, x, box, lam_s, lam_e):
        """The ligand's 1-4 pairs: Lennard-Jones (the inner model has none) and the Coulomb correction."""
        acc = self.amber_.precision.accumulate
        pairs = self.amber_.terms_.pair14_idx[self.pair14]
        i, j = pairs[:, 0], pairs[:, 1]
        dr = minimum_image(x[j] - x[i], box)
        r2 = jnp.sum(dr * dr, axis=-1)
        ti, tj = self.atom_type[i], self.atom_type[j]
        s6, eps = sigma6_epsilon(p.lj_a[ti, tj], p.lj_b[ti, tj])
        lam = self._intramolecular_lambda(lam_s).astype(acc)
        e_lj = softcore_lennard_jones(r2, s6, eps * p.lj14_scale[self.pair14], lam, self.softcore_alpha)
        _, c_14 = self._coulomb_coefficients(lam_e)
        e_c = COULOMB * p.coulomb14_scale[self.pair14] * p.charges[i] * p.charges[j] / jnp.sqrt(r2)
        return {"ligand_lennard_jones14": jnp.sum(e_lj, dtype=acc),
                "ligand_coulomb14": c_14.astype(acc) * jnp.sum(e_c, dtype=acc)}

    def _dispersion_tail(self, p, box, lam_s):
        """Long-range tails of the ligand's softcore pairs (periodic cutoffs with the correction on).

        As OpenMM's ``CustomNonbondedForce`` long-range correction: the pair tails summed over
        ligand-environment pairs and ligand-ligand pairs i < j, times N / (N + 1) / V.
        """
        inner = self.amber_
        acc = inner.precision.accumulate
        if not inner.use_dispersion_correction or inner.nonbonded == "nocutoff" or box is None:
            return jnp.zeros((), acc)
        lig_types = self.atom_type[self.ligand]
        s6, eps = sigma6_epsilon(p.lj_a[lig_types], p.lj_b[lig_types])  # (L, T)
        environment = jnp.sum(self.environment_type_counts[None, :]
                              * softcore_tail(s6, eps, lam_s, inner.cutoff, self.softcore_alpha))
        s6l, epsl = s6[:, lig_types], eps[:, lig_types]  # (L, L)
        upper = jnp.triu(jnp.ones(s6l.shape, bool), k=1)
        lam = self._intramolecular_lambda(lam_s)
        ligand = jnp.sum(jnp.where(upper, softcore_tail(s6l, epsl, lam, inner.cutoff, self.softcore_alpha), 0.0))
        n = float(self.n_atoms)
        volume = box_volume(jnp.asarray(box).astype(acc))
        return ((environment + ligand).astype(acc) * (n / (n + 1.0)) / volume).astype(acc)

    def _implicit(self, p, x, box, neighbors, lam_e):
        gb_idx = jnp.concatenate([neighbors.idx, neighbors.exclusions.astype(neighbors.idx.dtype)], axis=1)
        weights = jnp.where(self.is_ligand, lam_e, 1.0)
        prec = self.amber_.precision
        return scaled_obc_energy(x, p.charges, p.gb_radii, p.gb_screen, weights, gb_idx, box=box,
                                 cutoff=self.amber_.cutoff, return_parts=True, compute_dtype=prec.compute,
                                 accumulate_dtype=prec.accumulate, **dict(self.implicit_solvent))


def alchemical_energy(model, ligand_atoms, *, mode: str = "decouple", softcore_alpha: float = SOFTCORE_ALPHA,
                      lambda_sterics: float = 1.0, lambda_electrostatics: float = 1.0):
    """Make a ligand alchemical in an Amber model (validated on the host).

    Args:
        model: an Amber ``(params, energy_fn)`` pair (``System.energy_fn(...)``, any
            nonbonded method, implicit solvent and precision).
        ligand_atoms: indices of the ligand's atoms (a whole molecule, bonded to nothing else;
            with implicit solvent it may be the whole system, the solvent leg of a binding
            free energy).
        mode: ``"decouple"`` (intramolecular interactions kept) or ``"annihilate"``.
        softcore_alpha: softcore alpha of the Lennard-Jones (openmmtools' 0.5).
        lambda_sterics, lambda_electrostatics: initial couplings in the returned params
            (1 = fully interacting).

    Returns:
        ``(AlchemicalParams, AlchemicalEnergy)``.

    Raises:
        InputError: an unknown mode, a non-Amber model, an empty or out-of-range selection,
            a ligand bonded to the rest, lambdas outside [0, 1].
        UnsupportedError: virtual sites in the ligand.

    Example:
        >>> system = diffmd.load_amber(*diffmd.data.cb7_b2())
        >>> ligand = [i for i in range(system.n_atoms)
        ...           if system.topology.residue_names[system.topology.residue_index[i]] == "B2"]
        >>> params, energy_fn = alchemical_energy(system.energy_fn(implicit_solvent="obc2"), ligand)
        >>> window = dataclasses.replace(params, lambda_sterics=0.5, lambda_electrostatics=0.0)
        >>> energy = energy_fn(window, system.positions)
    """
    if mode not in MODES:
        raise InputError(f"unknown alchemical mode {mode!r}: choose one of {', '.join(MODES)}")
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], AmberEnergy)):
        raise InputError("alchemical_energy wraps an Amber (params, energy_fn) pair, e.g. system.energy_fn(...)")
    if not softcore_alpha > 0:
        raise InputError(f"softcore_alpha must be positive, got {softcore_alpha!r}")
    for name, value in (("lambda_sterics", lambda_sterics), ("lambda_electrostatics", lambda_electrostatics)):
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{name} must lie in [0, 1] (1 = fully coupled), got {value!r}")
    params, amber = model
    terms = amber.terms_
    n = terms.n_atoms
    ligand = _ligand_indices(ligand_atoms, n, whole_allowed=amber.implicit_solvent is not None)
    is_ligand = np.zeros(n, bool)
    is_ligand[ligand] = True
    _check_separate(np.asarray(terms.exclusions), is_ligand, "excluded pair")
    _check_separate(np.asarray(terms.pair14_idx), is_ligand, "1-4 pair")
    if amber.virtual_sites_ is not None and np.any(is_ligand[np.asarray(amber.virtual_sites_.index)]):
        raise UnsupportedError("virtual sites in the ligand are not supported by the alchemical model "
                               "(as in openmmtools): choose a ligand without extra particles")
    atom_type = np.asarray(terms.atom_type)
    n_types = int(np.asarray(params.lj_a).shape[0])
    environment_counts = np.bincount(atom_type[~is_ligand], minlength=n_types).astype(np.float64)
    inner_terms = dataclasses.replace(
        terms, atom_type=jnp.asarray(np.where(is_ligand, n_types, atom_type).astype(atom_type.dtype)),
        type_counts=jnp.asarray(np.append(environment_counts, len(ligand)).astype(np.asarray(terms.type_counts).dtype)))
    inner = dataclasses.replace(amber, terms_=inner_terms, implicit_solvent=None)
    gb_settings = None
    if amber.implicit_solvent is not None:  # computed here, with weights, instead of by the inner model
        gb_settings = (("model", amber.implicit_solvent), ("solute_dielectric", amber.solute_dielectric),
                       ("solvent_dielectric", amber.solvent_dielectric), ("surface_tension", amber.surface_tension))
    fn = AlchemicalEnergy(
        amber_=inner, ligand=jnp.asarray(ligand), is_ligand=jnp.asarray(is_ligand), atom_type=jnp.asarray(atom_type),
        pair_kind=jnp.asarray(_pair_kinds(ligand, is_ligand, np.asarray(amber.exclusion_table_))),
        pair14=jnp.asarray(np.flatnonzero(np.all(is_ligand[np.asarray(terms.pair14_idx)], axis=1)
                                          if len(np.asarray(terms.pair14_idx)) else np.zeros(0, bool))),
        environment_type_counts=jnp.asarray(environment_counts), mode=mode, softcore_alpha=float(softcore_alpha),
        implicit_solvent=gb_settings)
    dtype = jnp.asarray(params.charges).dtype
    return AlchemicalParams(amber=params, lambda_sterics=jnp.asarray(lambda_sterics, dtype),
                            lambda_electrostatics=jnp.asarray(lambda_electrostatics, dtype)), fn


def _ligand_indices(ligand_atoms, n_atoms: int, whole_allowed: bool = False) -> np.ndarray:
    ligand = np.asarray(ligand_atoms).reshape(-1)
    if ligand.size == 0:
        raise InputError("the ligand selection is empty: pass the ligand's atom indices (0-based)")
    if not np.issubdtype(ligand.dtype, np.integer):
        raise InputError(f"ligand atoms must be integer atom indices, got dtype {ligand.dtype}")
    if ligand.min() < 0 or ligand.max() >= n_atoms:
        raise InputError(f"ligand atom indices must lie in [0, {n_atoms}), got {ligand.min()}..{ligand.max()}")
    if len(np.unique(ligand)) != len(ligand):
        raise InputError("ligand atom indices repeat: pass each atom once")
    if len(ligand) == n_atoms and not whole_allowed:  # in implicit solvent, the solvent is left to decouple from
        raise InputError("the ligand selection is the whole system: there is nothing to decouple it from (in "
                         "implicit solvent there is: the ligand alone decouples from the solvent)")
    return np.sort(ligand).astype(np.int32)


def _check_separate(pairs: np.ndarray, is_ligand: np.ndarray, what: str) -> None:
    if len(pairs) == 0:
        return
    straddle = is_ligand[pairs[:, 0]] != is_ligand[pairs[:, 1]]
    if np.any(straddle):
        i, j = pairs[np.flatnonzero(straddle)[0]]
        raise InputError(f"the ligand is bonded to the rest of the system ({what} {i}-{j}): alchemical decoupling "
                         "needs the ligand to be a separate molecule; select the whole molecule")


def _pair_kinds(ligand: np.ndarray, is_ligand: np.ndarray, exclusion_table: np.ndarray) -> np.ndarray:
    """(L, N) int8 kinds of the pairs (ligand atom, atom): see ``AlchemicalEnergy.pair_kind``."""
    n = len(is_ligand)
    kind = np.where(is_ligand[None, :], _INTRAMOLECULAR, _ENVIRONMENT).astype(np.int8).repeat(len(ligand), 0)
    columns = np.arange(n)[None, :]
    kind[(columns <= ligand[:, None]) & is_ligand[None, :]] = _OUTSIDE  # self, and each ligand pair once
    excluded = exclusion_table[ligand]
    rows = np.repeat(np.arange(len(ligand))[:, None], excluded.shape[1], axis=1)
    real = excluded < n
    kind[rows[real], excluded[real]] = _OUTSIDE
    return kind
