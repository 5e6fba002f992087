"""``System``: a molecular system's topology, force-field parameters and coordinates.

A System is host-side data (numpy). ``System.energy_fn(...)`` turns it into the
pure JAX pair ``(params, energy_fn)`` for chosen settings. Files and OpenMM objects
become Systems in ``diffmd.io`` (``load_amber``, ``from_openmm``, ``load_openmm``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.errors import InputError
from ..kernels.gb import SURFACE_TENSION
from ..kernels.geometry import reduce_box
from ..potentials.amber import AmberParams, AmberTerms, amber_energy
from ._physics import Physics
from ._topology import Topology, require_finite
from ._gb_radii import warn_if_nonstandard_gb


@dataclasses.dataclass(frozen=True, eq=False)
class System:
    """A molecular system.

    Attributes:
        topology: atom names, elements, residues, chains, bonds.
        masses: (N,) [amu].
        params: force-field parameters (host float64), see ``AmberParams``.
        terms: integer topology of the force-field terms, see ``AmberTerms``.
        positions: (N, 3) [nm] or None.
        velocities: (N, 3) [nm/ps] or None.
        box: (3, 3) reduced box vectors [nm] or None for non-periodic systems.
        source: where the system came from (file names), for messages.
        physics: None for Amber prmtops (the nonbonded method, implicit solvent and
            constraints are chosen in ``energy_fn`` and ``simulate``); for a system from
            OpenMM, the ``Physics`` its System defines (nonbonded method and cutoff, GB,
            constraints, virtual sites), which ``energy_fn()`` and ``simulate()`` follow.
    """

    topology: Topology
    masses: np.ndarray
    params: AmberParams
    terms: AmberTerms
    positions: np.ndarray | None = None
    velocities: np.ndarray | None = None
    box: np.ndarray | None = None
    source: str = ""
    physics: Physics | None = None

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @property
    def charge(self) -> float:
        """Net charge [e]."""
        return float(np.sum(self.params.charges))

    def to_ase(self, positions=None):
        """The matching ``ase.Atoms`` (positions [A], cell [A] and ``pbc`` from the box), for use with
        ``diffmd.ase.Calculator(self)``; ``positions`` [nm] default to the system's."""
        from ._ase_atoms import system_to_ase

        return system_to_ase(self, positions)

    def with_positions(self, positions, box=None, velocities=None) -> "System":
        """A copy with new positions [nm] (and optionally box [nm], velocities [nm/ps])."""
        positions = checked_positions(positions, self.n_atoms, self.source, self.topology)
        box = self.box if box is None else reduce_box(box)
        return dataclasses.replace(self, positions=positions, box=box,
                                   velocities=self.velocities if velocities is None else np.asarray(velocities))

    def energy_fn(self, nonbonded: str | None = None, cutoff: float | None = None, implicit_solvent: str | None = None,
                  precision: str = "double", *, reaction_field_dielectric: float | None = None,
                  solute_dielectric: float | None = None, solvent_dielectric: float | None = None,
                  use_dispersion_correction: bool | None = None, skin: float = 0.1,
                  ewald_error_tolerance: float | None = None, pme_alpha: float | None = None, pme_grid=None,
                  surface_tension: float | None = None):
        """Energy model ``(params, energy_fn)`` with OpenMM's createSystem defaults.

        A system from OpenMM (``physics`` set) has these settings already: leave them out
        (None) and they are the System's; a value that differs raises ``InputError``.

        Args:
            nonbonded: ``"nocutoff"`` (default), ``"cutoff"`` (reaction field; periodic
                if the system has a box) or ``"pme"``.
            cutoff: nonbonded cutoff [nm] (default 1.0, as OpenMM).
            implicit_solvent: None, ``"obc2"`` (GB-OBC2, Amber igb=5), ``"obc1"`` (igb=2)
                or ``"hct"`` (igb=1), each with the ACE surface term, as OpenMM's
                ``implicitSolvent=OBC2/OBC1/HCT``. Radii and screening factors come from the
                prmtop; a ``UserWarning`` says when they are not the set the model was
                parametrized with (mbondi2 for OBC, mbondi for HCT), as OpenMM warns.
            solute_dielectric, solvent_dielectric: GB dielectrics (OpenMM's defaults).
            precision: ``"double"`` (default: float64, the reference OpenMM is checked
                against), ``"mixed"`` (``diffmd.simulate``'s default) or ``"single"``.
                Double and mixed need ``jax_enable_x64``; without it this raises
                ``InputError`` before tracing (turn it on with
                ``jax.config.update("jax_enable_x64", True)`` or pass ``precision="single"``).
            reaction_field_dielectric: default 78.3 (1.0 with implicit solvent, as OpenMM).
            use_dispersion_correction: long-range LJ correction for periodic cutoffs.
            skin: neighbor-list skin [nm].
            ewald_error_tolerance: PME accuracy (OpenMM's default 5e-4); alpha and the
                grid follow from it as OpenMM chooses them.
            pme_alpha, pme_grid: override the Ewald parameter [1/nm] and PME grid.
            surface_tension: GB's ACE surface energy [kJ/mol/nm^2] (default OpenMM's 2.25936).

        Returns:
            ``(params, energy_fn)``; ``energy_fn(params, positions, box, neighbors)``
            gives kJ/mol, ``energy_fn.terms(...)`` the per-term breakdown and
            ``energy_fn.neighbor_list(positions, box)`` the neighbor table.
        """
        given = dict(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent,
                     reaction_field_dielectric=reaction_field_dielectric, solute_dielectric=solute_dielectric,
                     solvent_dielectric=solvent_dielectric, use_dispersion_correction=use_dispersion_correction,
                     ewald_error_tolerance=ewald_error_tolerance, pme_alpha=pme_alpha, pme_grid=pme_grid,
                     surface_tension=surface_tension)
        if self.physics is not None:
            s = self.physics.resolve(self.source or "the OpenMM System", **given)
        else:
            s = _amber_defaults(given)
        nonbonded = s["nonbonded"]
        box = self.box if nonbonded != "nocutoff" else None
        if nonbonded in ("pme",) and box is None:
            raise InputError(f"{self.source or 'system'}: nonbonded='pme' needs a periodic box, but the system has none")
        model = amber_energy(self.params, self.terms, precision=precision, box=box, skin=skin,
                             virtual_sites=None if self.physics is None else self.physics.virtual_sites, **s)
        if s["implicit_solvent"] is not None and self.physics is None:
            # as OpenMM's AmberPrmtopFile: a prmtop's radii should be the set the GB model was fitted with

            warn_if_nonstandard_gb(self.topology, self.params.gb_radii, self.params.gb_screen, s["implicit_solvent"],
                                   self.source)
        return model


def _amber_defaults(given: dict) -> dict:
    """``energy_fn`` settings of an Amber system: what was given, else OpenMM's createSystem defaults."""
    defaults = dict(nonbonded="nocutoff", cutoff=1.0, solute_dielectric=1.0, solvent_dielectric=78.5,
                    use_dispersion_correction=True, ewald_error_tolerance=5e-4, surface_tension=SURFACE_TENSION,
                    # OpenMM's createSystem uses 1.0 beyond the cutoff when GB models the solvent
                    reaction_field_dielectric=78.3 if given["implicit_solvent"] is None else 1.0)
    return {k: defaults.get(k) if v is None else v for k, v in given.items()}


def checked_positions(positions, n_atoms: int, source: str = "", topology: Topology | None = None) -> np.ndarray:
    """``positions`` as (n_atoms, 3) float64 [nm]; InputError for another shape or NaN/Inf (naming
    the first such atom, with its name and residue when ``topology`` is given)."""
    positions = np.asarray(positions, dtype=np.float64)
    where = f"{source}: " if source else ""
    if positions.shape != (n_atoms, 3):
        raise InputError(f"{where}positions must have shape ({n_atoms}, 3) [nm], got {positions.shape}")
    require_finite(positions, f"{where}positions", topology)
    return positions
