"""jax-md interoperability, both ways.

- ``to_jax_md``: a diffmd potential (or a System's force field) as a jax-md energy function
  ``energy_fn(R, neighbor=None, **kwargs) -> E``, for ``jax_md.simulate`` integrators and
  ``jax_md.quantity.force``; with a cutoff, ``neighbor_fn.allocate(R)`` / ``neighbor_fn.update(R, nbrs)``
  keep diffmd's neighbor table (jax-md's ``NeighborListFns`` shape; overflow flag ``nbrs.overflow``).
- ``from_jax_md``: a jax-md energy function or neural network as a diffmd potential
  ``(params, energy_fn)`` that ``simulate``, ``minimize``, ``ensemble``, ``sum_potentials`` and
  ``diffmd.ase.Calculator`` take. With a cutoff, diffmd's runner keeps the neighbor table (built,
  updated and re-allocated on overflow as for its own potentials) and hands it to the jax-md
  function as a Dense ``jax_md.partition.NeighborList`` (the same (N, K) layout padded with N).

Units: diffmd's (nm, kJ/mol); a jax-md model must be written in them (jax-md itself is unit-free).
Boxes: jax-md spaces fix the box when the displacement function is built; ``from_jax_md(...,
box_kwarg="box")`` passes the current box [nm] to functions of a ``space.periodic_general`` space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
from ..kernels.neighbors import allocate_neighbors, exclusion_table, update_neighbors


def _jax_md_neighbor_list(neighbors):
    """diffmd's ``Neighbors`` table viewed as a Dense ``jax_md.partition.NeighborList``."""
    try:
        from jax_md import partition
    except ImportError:
        from ..workflows import MissingExtraError

        raise MissingExtraError('a jax-md potential with a cutoff needs jax-md: pip install "diffmd[jax-md]"') from None

    return partition.NeighborList(
        idx=neighbors.idx, reference_position=neighbors.reference_positions,
        error=partition.PartitionError(jnp.zeros((), jnp.uint8)), cell_list_capacity=None,
        max_occupancy=int(neighbors.idx.shape[1]), format=partition.NeighborListFormat.Dense, cell_size=None,
        cell_list_fn=None, update_fn=None)


@dataclasses.dataclass(frozen=True, eq=False)
class JaxMDEnergy:
    """A jax-md energy function with diffmd's signature ``energy_fn(params, positions, box, neighbors)``.

    Attributes:
        fn: the jax-md function: ``fn(R, **kw)`` or, with ``takes_params``, ``fn(params, R, **kw)``.
        n_atoms: atoms it is built for.
        cutoff: its interaction cutoff [nm], or None when it needs no neighbor list.
        skin: neighbor-table skin [nm].
        takes_params: whether ``fn`` takes parameters first (neural networks).
        box_kwarg: keyword under which the box [nm] is passed (None: not passed).
    """

    fn: Callable
    n_atoms: int
    cutoff: float | None = None
    skin: float = 0.1
    takes_params: bool = False
    box_kwarg: str | None = None

    def neighbor_list(self, positions, box=None):
        """diffmd neighbor table for ``cutoff`` + ``skin`` (None without a cutoff)."""
        if self.cutoff is None:
            return None
        return allocate_neighbors(positions, box, exclusion_table(self.n_atoms, np.zeros((0, 2), int)), self.cutoff,
                                  self.skin)

    def __call__(self, params, positions, box=None, neighbors=None):
        """Energy [kJ/mol]."""
        positions = jnp.asarray(positions)  # jax-md gathers with padded indices, which numpy arrays refuse
        kw = {}
        if self.cutoff is not None:
            if neighbors is None:
                raise InputError("this jax-md potential has a cutoff: pass neighbors = energy_fn.neighbor_list("
                                 "positions, box)")
            kw["neighbor"] = _jax_md_neighbor_list(neighbors)
        if self.box_kwarg is not None and box is not None:
            kw[self.box_kwarg] = box
        return self.fn(params, positions, **kw) if self.takes_params else self.fn(positions, **kw)


def from_jax_md(energy_fn, n_atoms: int, params=None, *, cutoff: float | None = None, skin: float = 0.1,
                box_kwarg: str | None = None):
    """A jax-md energy function (or neural network) as a diffmd potential ``(params, energy_fn)``.

    Args:
        energy_fn: ``energy_fn(R)`` / ``energy_fn(R, neighbor=nbrs)`` (e.g. ``jax_md.energy.
            lennard_jones_neighbor_list(displacement, box, ...)``), or with ``params``
            ``energy_fn(params, R[, neighbor=nbrs])`` (e.g. a jax-md graph network's ``apply``). In kJ/mol
            of positions in nm.
        n_atoms: number of atoms.
        params: the network's parameters (a pytree; differentiable like any diffmd parameters), or None.
        cutoff: the function's cutoff [nm] when it takes ``neighbor=`` (None: it does not).
        skin: neighbor-table skin [nm].
        box_kwarg: pass the current box [nm] under this keyword (``"box"`` for ``space.periodic_general``).

    Returns:
        ``(params, JaxMDEnergy)``.
    """
    if not callable(energy_fn):
        raise InputError("energy_fn must be a jax-md energy function (callable)")
    if cutoff is not None and not cutoff > 0:
        raise InputError(f"cutoff must be > 0 nm or None, got {cutoff}")
    return params, JaxMDEnergy(energy_fn, int(n_atoms), None if cutoff is None else float(cutoff), float(skin),
                               params is not None, box_kwarg)


class NeighborFns(NamedTuple):
    """jax-md's ``NeighborListFns`` shape over diffmd's neighbor table: ``allocate(R)`` on the host,
    ``update(R, nbrs)`` jit-able (``nbrs.overflow`` says a re-allocation is needed)."""

    allocate: Callable
    update: Callable


def to_jax_md(potential, box=None):
    """A diffmd potential as a jax-md energy function.

    Args:
        potential: ``(params, energy_fn)`` (e.g. ``system.energy_fn(nonbonded="cutoff")``, a trained
            model, a sum).
        box: (3, 3) box [nm] for periodic potentials (fixed, as jax-md spaces fix theirs), or None.

    Returns:
        ``(energy_fn, neighbor_fn)``: ``energy_fn(R, neighbor=None, **kwargs) -> E`` [kJ/mol] (extra
        keyword arguments that jax-md integrators pass, such as ``kT``, are ignored), and
        ``neighbor_fn`` (``NeighborFns``) whose ``allocate(R)`` gives the table ``neighbor=`` takes
        (without a cutoff an all-pairs table, which ``energy_fn(R)`` also builds by itself). Use it with ``jax_md.space.free()``
        (or the matching periodic space) and ``jax_md.simulate``.
    """
    if not (isinstance(potential, (tuple, list)) and len(potential) == 2 and callable(potential[1])):
        raise InputError("potential must be a (params, energy_fn) pair, e.g. system.energy_fn()")
    params, fn = potential
    box = None if box is None else jnp.asarray(box)

    def energy(R, neighbor=None, **unused: Any):
        return fn(params, R, box, neighbor)

    def allocate(R, **unused: Any):
        return fn.neighbor_list(np.asarray(R), None if box is None else np.asarray(box))

    def update(R, neighbor, **unused: Any):
        return None if neighbor is None else update_neighbors(neighbor, R, box)

    return energy, NeighborFns(allocate, update)
