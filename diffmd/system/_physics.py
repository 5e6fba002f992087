"""``Physics``: what an imported OpenMM System fixes beyond its force-field parameters.

An Amber prmtop holds parameters only: the nonbonded method, cutoff, implicit solvent and
constraints are chosen later (``System.energy_fn``, ``simulate``), with OpenMM's
``createSystem`` defaults. An OpenMM ``System`` has already made those choices, so a
``System`` converted from one carries them here, and ``energy_fn()`` and ``simulate()``
follow them: an argument that would change them is an error naming it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.errors import InputError
from ..kernels.virtual_sites import VirtualSites

#: ``System.energy_fn`` keywords a ``Physics`` fixes
ENERGY_KEYS = ("nonbonded", "cutoff", "implicit_solvent", "reaction_field_dielectric", "solute_dielectric",
               "solvent_dielectric", "surface_tension", "use_dispersion_correction", "ewald_error_tolerance",
               "pme_alpha", "pme_grid")


@dataclasses.dataclass(frozen=True, eq=False)
class Physics:
    """Settings an OpenMM System defines (units: nm, kJ/mol).

    Attributes:
        nonbonded: ``'nocutoff'``, ``'cutoff'`` (reaction field; periodic when the system
            has a box) or ``'pme'``.
        cutoff: nonbonded cutoff [nm], None without one.
        reaction_field_dielectric: dielectric beyond the cutoff.
        use_dispersion_correction: OpenMM's long-range LJ correction (periodic cutoffs).
        ewald_error_tolerance: PME accuracy; with ``pme_alpha``/``pme_grid`` None, alpha and
            the grid follow from it as OpenMM chooses them.
        pme_alpha: Ewald parameter [1/nm] the System sets explicitly, else None.
        pme_grid: PME grid the System sets explicitly, else None.
        implicit_solvent: None or the GB model (``'obc2'``, ``'obc1'``, ``'hct'``).
        solute_dielectric, solvent_dielectric: GB dielectrics.
        surface_tension: GB's ACE surface energy [kJ/mol/nm^2] (0: none).
        constraint_pairs: (C, 2) constrained atom pairs; constraint_lengths: (C,) [nm].
        virtual_sites: the System's virtual sites, or None.
    """

    nonbonded: str = "nocutoff"
    cutoff: float | None = None
    reaction_field_dielectric: float = 78.3
    use_dispersion_correction: bool = True
    ewald_error_tolerance: float = 5e-4
    pme_alpha: float | None = None
    pme_grid: tuple | None = None
    implicit_solvent: str | None = None
    solute_dielectric: float = 1.0
    solvent_dielectric: float = 78.5
    surface_tension: float = 0.0
    constraint_pairs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int32))
    constraint_lengths: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    virtual_sites: VirtualSites | None = None

    def energy_settings(self) -> dict:
        """The ``System.energy_fn`` keywords these settings fix."""
        return {k: getattr(self, k) for k in ENERGY_KEYS}

    def resolve(self, source: str, **given) -> dict:
        """``given`` keywords with None filled from these settings.

        Raises:
            InputError: a given value that differs from the System's, naming it.
        """
        fixed = self.energy_settings()
        out = dict(given)
        for key, value in given.items():
            if key not in fixed:
                continue
            mine = fixed[key]
            if value is None:
                out[key] = mine
            elif key == "cutoff" and self.nonbonded == "nocutoff":
                out[key] = None  # no cutoff to contradict: the value is unused
            elif key in ("pme_alpha", "pme_grid") and mine is None:
                out[key] = value  # the System leaves them to OpenMM's choice: an explicit one refines it
            elif not _same(value, mine):
                raise InputError(
                    f"{key}={value!r} conflicts with the OpenMM System ({source}), which defines {key}={mine!r} "
                    f"(a System fixes its own physics): drop {key}, or build the System with the setting you want")
        return out


def _same(a, b) -> bool:
    if a is None or b is None or isinstance(a, (str, bool)) or isinstance(b, (str, bool)):
        return a == b
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return tuple(int(x) for x in a) == tuple(int(x) for x in b)
    return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0.0))
