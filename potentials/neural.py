"""Neural potentials (flax) as ``(params, energy_fn)`` pairs, and sums of potentials.

``schnet(species, ...)`` (invariant, SchNet-like) and ``painn(species, ...)``
(E(3)-equivariant, PaiNN-like) return ``(params, energy_fn)`` with
``energy_fn(params, positions, box, neighbors) -> energy [kJ/mol]``, the same
signature as the classical Amber model, so they drop into minimization,
simulation and training code unchanged. ``params`` is the flax variable dict.

Neighbor tables: a neural potential must see every pair within its cutoff,
bonded pairs included, so it needs its own table with no exclusions:
``energy_fn.neighbor_list(positions, box)`` allocates it (for periodic boxes the
minimum image is used). Entries padded with N, partners beyond the cutoff (the
skin) and pairs that touch a padding atom are masked; no N x N array is formed.

Species: contiguous indices 0..S-1, one per atom, with -1 marking a padding atom
(contributes nothing and is seen by nobody). ``species_from_elements`` maps
atomic numbers (``system.topology.elements``) to them.

``sum_potentials((p1, f1), (p2, f2), ...)`` adds models: its params are the
tuple of the parts' params and its ``neighbors`` argument the tuple of their
tables (``energy_fn.neighbor_list`` builds that tuple), e.g. Amber plus a neural
correction. Code that refreshes tables with ``update_neighbors`` must map it over
the tuple (``update_neighbor_tables`` does).

Example:
    >>> system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    >>> species, _ = species_from_elements(system.topology.elements)
    >>> nn_params, nn_fn = schnet(species, cutoff=0.5, key=jax.random.PRNGKey(0))
    >>> params, energy_fn = sum_potentials(system.energy_fn(), (nn_params, nn_fn))
    >>> nbrs = energy_fn.neighbor_list(system.positions, None)
    >>> energy = energy_fn(params, system.positions, None, nbrs)
    >>> result = diffmd.simulate(system, 1000, potential=(params, energy_fn))   # MD with it
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
from ..kernels.geometry import minimum_image
from ..kernels.neighbors import Neighbors, allocate_neighbors, exclusion_table, update_neighbor_tables
from ..kernels.precision import Precision, check_x64, resolve_precision
from ._painn import PaiNN
from ._schnet import SchNet

__all__ = ["NeuralEnergy", "SumEnergy", "pair_geometry", "painn", "schnet", "species_from_elements",
           "sum_potentials", "update_neighbor_tables"]


def species_from_elements(elements, table=None):
    """Map atomic numbers to contiguous species indices (host).

    Args:
        elements: (N,) atomic numbers (e.g. ``system.topology.elements``); 0
            (virtual sites, unknown) becomes species -1, i.e. no neural energy.
        table: optional (S,) atomic numbers that define the indices (to share a
            model between systems); default: the sorted distinct elements present.

    Returns:
        (species (N,) int32, table (S,) int64): ``table[species[i]] == elements[i]``.

    Raises:
        InputError: an element missing from ``table``.
    """
    elements = np.asarray(elements, np.int64).reshape(-1)
    table = np.unique(elements[elements > 0]) if table is None else np.asarray(table, np.int64).reshape(-1)
    lookup = {int(z): k for k, z in enumerate(table)}
    missing = sorted({int(z) for z in elements if z > 0 and int(z) not in lookup})
    if missing:
        raise InputError(f"atomic numbers {missing} are not in the species table {table.tolist()}: "
                         "add them to the table (or pass table=None)")
    species = np.array([lookup.get(int(z), -1) for z in elements], np.int32)
    return species, table


def pair_geometry(positions, box, idx, cutoff: float, real=None):
    """Displacements, distances and validity of the table's pairs (jit-able).

    Args:
        positions: (N, 3) [nm].
        box: (3, 3) reduced box [nm] or None.
        idx: (N, K) partner table padded with N.
        cutoff: [nm]; partners at or beyond it are masked.
        real: optional (N,) bool, False for padding atoms.

    Returns:
        (dr (N, K, 3) r_j - r_i [nm], r (N, K) [nm], mask (N, K) bool). Masked
        entries hold a constant displacement of length 2 * cutoff so that every
        downstream function and gradient stays finite there.
    """
    n = positions.shape[0]
    partner = jnp.minimum(idx, n - 1)
    dr = minimum_image(positions[partner] - positions[:, None, :], box)
    r2 = jnp.sum(dr * dr, axis=-1)
    mask = (idx < n) & (r2 < cutoff * cutoff)
    if real is not None:
        mask = mask & real[:, None] & real[partner]
    far = jnp.zeros((1, 1, 3), dr.dtype).at[..., 0].set(2.0 * cutoff)
    dr = jnp.where(mask[..., None], dr, far)
    r = jnp.sqrt(jnp.where(mask, r2, 4.0 * cutoff * cutoff))
    return dr, r, mask


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralEnergy:
    """Energy function of a neural potential (species and architecture fixed).

    Call as ``energy_fn(params, positions, box, neighbors)`` -> energy [kJ/mol]
    (accumulate dtype); ``atomic_energies`` gives the (N,) per-atom parts.

    Attributes:
        module: the flax module (``SchNet`` or ``PaiNN``).
        species: (N,) int32 species indices (-1: padding atom).
        cutoff: interaction cutoff [nm].
        skin: default neighbor-list skin [nm].
        precision: resolved precision (network math in ``compute``, the sum
            over atoms in ``accumulate``).
        training_energy_range: ``(low, high)`` potential energy per atom [kJ/mol] of
            the frames the model was trained on (``diffmd.train.load_model`` sets it from
            ``model.json``), or None; the MD runner names a failure where the model's
            energy left that range.
    """

    module: nn.Module
    species: np.ndarray
    cutoff: float
    skin: float
    precision: Precision
    training_energy_range: tuple | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])

    def neighbor_list(self, positions, box=None, skin: float | None = None, **kwargs) -> Neighbors:
        """Allocate this model's table on the host: every pair within cutoff + skin, none excluded.

        Args:
            positions: (N, 3) [nm].
            box: (3, 3) [nm] or None.
            skin: list skin [nm] (default ``self.skin``).
            kwargs: passed to ``allocate_neighbors`` (``margin``, ``capacity``).
        """
        skin = self.skin if skin is None else skin
        none = exclusion_table(self.n_atoms, np.zeros((0, 2), np.int64))
        return allocate_neighbors(np.asarray(positions), None if box is None else np.asarray(box), none,
                                  self.cutoff, skin, **kwargs)

    def _check_table(self, neighbors):
        if neighbors is None:
            raise InputError("a neural potential needs a neighbor table: neighbors = energy_fn.neighbor_list("
                             "positions, box)")
        if not isinstance(neighbors, Neighbors):
            raise InputError(f"neighbors must be a diffmd Neighbors table, got {type(neighbors).__name__} "
                             "(a summed potential takes a tuple of tables, one per part)")
        if neighbors.idx.shape[-2] != self.n_atoms:
            raise InputError(f"the neighbor table has {neighbors.idx.shape[-2]} rows but the model "
                             f"{self.n_atoms} atoms")
        if neighbors.cutoff < self.cutoff:
            raise InputError(f"the neighbor table's cutoff {neighbors.cutoff} nm is below the model's "
                             f"{self.cutoff} nm: build it with energy_fn.neighbor_list(positions, box)")
        excl = neighbors.exclusions
        # a table that leaves out bonded pairs would silently change the energy
        has_exclusions = excl.shape[-1] > 1
        if not has_exclusions and not isinstance(excl, jax.core.Tracer):
            has_exclusions = bool(np.any(np.asarray(excl) < self.n_atoms))
        if has_exclusions:
            raise InputError("this neighbor table excludes pairs (e.g. a force field's bonded pairs), but a neural "
                             "potential must see them all: use energy_fn.neighbor_list(positions, box)")

    def atomic_energies(self, params, positions, box=None, neighbors: Neighbors | None = None):
        """(N,) per-atom energies [kJ/mol] in the compute dtype (zero for padding atoms)."""
        self._check_table(neighbors)
        check_x64(self.precision, built=True)
        dtype = self.precision.compute
        x = jnp.asarray(positions).astype(dtype)
        box = None if box is None else jnp.asarray(box).astype(dtype)
        species = jnp.asarray(self.species)
        real = species >= 0
        dr, r, mask = pair_geometry(x, box, neighbors.idx, self.cutoff, real)
        e = self.module.apply(params, jnp.maximum(species, 0), dr, r, mask, neighbors.idx)
        return jnp.where(real, e, 0.0)

    def __call__(self, params, positions, box=None, neighbors: Neighbors | None = None):
        """Potential energy [kJ/mol] (accumulate dtype)."""
        e = self.atomic_energies(params, positions, box, neighbors)
        return jnp.sum(e.astype(self.precision.accumulate))


def _per_species(value, n_species: int, what: str) -> tuple:
    arr = np.asarray(value, np.float64)
    if arr.ndim == 0:
        arr = np.full(n_species, float(arr))
    if arr.shape != (n_species,):
        raise InputError(f"{what} must be a scalar or have one value per species ({n_species}), got shape "
                         f"{arr.shape}")
    return tuple(float(a) for a in arr)


def _build(module_cls, species, *, cutoff, features, interactions, n_rbf, n_species, energy_shift, energy_scale,
           precision, skin, key):
    species = np.asarray(species)
    if species.ndim != 1 or species.size == 0 or not np.issubdtype(species.dtype, np.integer):
        raise InputError("species must be a non-empty (N,) integer array (species_from_elements(elements) gives "
                         "one)")
    if species.min() < -1:
        raise InputError("species indices must be >= 0 (or -1 for padding atoms)")
    top = int(species.max()) + 1
    n_species = max(top, 1) if n_species is None else int(n_species)
    if top > n_species:
        raise InputError(f"species index {top - 1} does not fit n_species={n_species}")
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise InputError(f"cutoff must be a positive distance [nm], got {cutoff!r}")
    for name, v in (("features", features), ("interactions", interactions), ("n_rbf", n_rbf)):
        if int(v) < 1:
            raise InputError(f"{name} must be >= 1, got {v!r}")
    prec = resolve_precision(precision)
    module = module_cls(n_species=n_species, cutoff=float(cutoff), features=int(features),
                        interactions=int(interactions), n_rbf=int(n_rbf),
                        energy_shift=_per_species(energy_shift, n_species, "energy_shift"),
                        energy_scale=_per_species(energy_scale, n_species, "energy_scale"), dtype=prec.compute)
    key = jax.random.PRNGKey(0) if key is None else key
    # parameter shapes do not depend on the number of atoms or partners: initialise on a stub
    stub_idx = jnp.ones((1, 1), jnp.int32)
    stub_dr = jnp.full((1, 1, 3), 2.0 * cutoff, prec.compute)
    stub_r = jnp.full((1, 1), 2.0 * cutoff, prec.compute)
    params = jax.jit(module.init)(key, jnp.zeros((1,), jnp.int32), stub_dr, stub_r, jnp.zeros((1, 1), bool), stub_idx)
    fn = NeuralEnergy(module=module, species=species.astype(np.int32), cutoff=float(cutoff), skin=float(skin),
                      precision=prec)
    return params, fn


def schnet(species, cutoff: float = 0.5, features: int = 64, interactions: int = 3, n_rbf: int = 20, *,
           n_species: int | None = None, energy_shift=0.0, energy_scale=1.0, precision: str = "single",
           skin: float = 0.1, key=None):
    """SchNet-like invariant neural potential as ``(params, energy_fn)``.

    Species embedding, Gaussian radial basis on [0, cutoff] under a cosine
    cutoff envelope, ``interactions`` continuous-filter convolutions, an
    atomwise MLP and a learnable per-species scale and shift, summed to the
    energy [kJ/mol].

    Args:
        species: (N,) int species indices, -1 for padding atoms
            (``species_from_elements(system.topology.elements)[0]``).
        cutoff: interaction cutoff [nm].
        features: atom feature width.
        interactions: interaction blocks.
        n_rbf: radial basis functions.
        n_species: embedding rows (default: max(species) + 1).
        energy_shift: initial per-species shift [kJ/mol], scalar or (S,).
        energy_scale: initial per-species scale [kJ/mol], scalar or (S,).
        precision: ``"single"`` (float32, default), ``"mixed"`` (float32 network,
            float64 sum) or ``"double"``.
        skin: default neighbor-list skin [nm].
        key: ``jax.random.PRNGKey`` for the initial weights (default key 0).

    Returns:
        ``(params, energy_fn)``: flax variables and a ``NeuralEnergy``.
    """
    return _build(SchNet, species, cutoff=cutoff, features=features, interactions=interactions, n_rbf=n_rbf,
                  n_species=n_species, energy_shift=energy_shift, energy_scale=energy_scale, precision=precision,
                  skin=skin, key=key)


def painn(species, cutoff: float = 0.5, features: int = 64, interactions: int = 3, n_rbf: int = 20, *,
          n_species: int | None = None, energy_shift=0.0, energy_scale=1.0, precision: str = "single",
          skin: float = 0.1, key=None):
    """PaiNN-like E(3)-equivariant neural potential as ``(params, energy_fn)``.

    Scalar and vector atom features, sine radial basis under a cosine cutoff
    envelope, ``interactions`` message + update blocks, atomwise readout of the
    scalars with a learnable per-species scale and shift [kJ/mol]. Arguments as
    in ``schnet``.
    """
    return _build(PaiNN, species, cutoff=cutoff, features=features, interactions=interactions, n_rbf=n_rbf,
                  n_species=n_species, energy_shift=energy_shift, energy_scale=energy_scale, precision=precision,
                  skin=skin, key=key)


@dataclasses.dataclass(frozen=True, eq=False)
class SumEnergy:
    """Sum of energy models: ``energy_fn(params_tuple, positions, box, neighbors_tuple)`` [kJ/mol].

    ``params`` and ``neighbors`` are tuples with one entry per part (an entry may
    be None where the part needs no table, e.g. Amber without a cutoff).

    Attributes:
        parts: the parts' energy functions.
    """

    parts: tuple

    def neighbor_list(self, positions, box=None) -> tuple:
        """Each part's own neighbor table, as a tuple (host)."""
        return tuple(f.neighbor_list(positions, box) for f in self.parts)

    def energies(self, params, positions, box=None, neighbors=None) -> tuple:
        """Each part's energy [kJ/mol], as a tuple."""
        neighbors = (None,) * len(self.parts) if neighbors is None else neighbors
        if not isinstance(neighbors, (tuple, list)) or len(neighbors) != len(self.parts):
            raise InputError(f"a sum of {len(self.parts)} potentials takes a tuple of {len(self.parts)} neighbor "
                             "tables: neighbors = energy_fn.neighbor_list(positions, box)")
        if len(params) != len(self.parts):
            raise InputError(f"a sum of {len(self.parts)} potentials takes a tuple of {len(self.parts)} parameter sets")
        return tuple(f(p, positions, box, nb) for f, p, nb in zip(self.parts, params, neighbors))

    def __call__(self, params, positions, box=None, neighbors=None):
        """Total potential energy [kJ/mol]."""
        parts = self.energies(params, positions, box, neighbors)
        dtype = jnp.result_type(*parts)
        total = parts[0].astype(dtype)
        for e in parts[1:]:
            total = total + e.astype(dtype)
        return total


def sum_potentials(*models):
    """Add energy models: ``sum_potentials((p1, f1), (p2, f2), ...) -> (params, energy_fn)``.

    Args:
        models: ``(params, energy_fn)`` pairs with the classical signature.

    Returns:
        ``((p1, p2, ...), SumEnergy)``; call it as ``energy_fn(params, positions,
        box, neighbors)`` where ``neighbors`` is the tuple ``(nbrs1, nbrs2, ...)``
        from ``energy_fn.neighbor_list(positions, box)``. The total is in the
        widest dtype of the parts.
    """
    if len(models) < 1:
        raise InputError("sum_potentials needs at least one (params, energy_fn) pair")
    for m in models:
        if not (isinstance(m, tuple) and len(m) == 2 and callable(m[1])):
            raise InputError("each argument of sum_potentials must be a (params, energy_fn) pair")
    return tuple(p for p, _ in models), SumEnergy(tuple(f for _, f in models))
