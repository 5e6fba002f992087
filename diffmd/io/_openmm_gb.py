"""Generalized Born forces of an OpenMM System, read as diffmd's GB model.

Two kinds are recognised:

- ``GBSAOBCForce`` (OpenMM's built-in OBC2, what ``AmberPrmtopFile.createSystem(
  implicitSolvent=OBC2)`` makes): per-particle charge, intrinsic radius [nm] and
  screening factor; solute/solvent dielectric and surface-area energy [kJ/mol/nm^2].
- the ``CustomGBForce`` recipes of ``openmm.app.internal.customgbforces`` for OBC2, OBC1
  and HCT (what ``ForceField(..., 'implicit/obc2.xml')``, ``obc1.xml``, ``hct.xml`` and
  ``AmberPrmtopFile`` with OBC1/HCT build), per-particle ``[charge, or, sr]`` with the
  offset radius ``or = radius - 0.009`` nm and ``sr = screen * or``. A force is taken for a
  recipe only when its expressions are character for character those OpenMM generates
  for the same settings (re-generated here from the settings the recipe writes into
  its energy terms), so an edited or unknown CustomGBForce is never misread. Those
  recipes use the literal 138.935485 for 1/(4 pi eps0); diffmd uses CODATA 2018's
  138.9354576, so their polar energy differs by 2e-7 relative.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

#: OpenMM's 0.009 nm dielectric offset of the recipes' offset radii
_OFFSET = 0.009
#: 4 pi sigma [kJ/mol/nm^2] the recipes' ACE term writes as a literal
_ACE_LITERAL = 28.3919551
_SETTING = re.compile(r"\b(solventDielectric|soluteDielectric|kappa|offset|cutoff)=([-+0-9.eEinfa]+)")


class GBModel(NamedTuple):
    """A GB force as diffmd's model: ``model`` ('obc2', 'obc1', 'hct'), per-particle
    ``charges`` [e], intrinsic ``radii`` [nm] and ``screen`` factors, dielectrics,
    ``surface_tension`` [kJ/mol/nm^2], OpenMM ``method`` (0 none, 1 non-periodic, 2
    periodic cutoff) and ``cutoff`` [nm] (None without one)."""

    model: str
    charges: np.ndarray
    radii: np.ndarray
    screen: np.ndarray
    solute_dielectric: float
    solvent_dielectric: float
    surface_tension: float
    method: int
    cutoff: float | None


def _value(x, unit=None):
    return float(x.value_in_unit(unit)) if hasattr(x, "value_in_unit") else float(x)


def gbsa_obc(force) -> GBModel:
    """``GBSAOBCForce`` (OBC2 with the ACE surface term)."""
    from openmm import unit

    n = force.getNumParticles()
    rows = [force.getParticleParameters(i) for i in range(n)]
    charges = np.array([_value(r[0], unit.elementary_charge) for r in rows])
    radii = np.array([_value(r[1], unit.nanometer) for r in rows])
    screen = np.array([float(r[2]) for r in rows])
    method = int(force.getNonbondedMethod())
    cutoff = None if method == 0 else _value(force.getCutoffDistance(), unit.nanometer)
    return GBModel("obc2", charges, radii, screen, float(force.getSoluteDielectric()),
                   float(force.getSolventDielectric()),
                   _value(force.getSurfaceAreaEnergy(), unit.kilojoule_per_mole / unit.nanometer**2), method, cutoff)


def _recipe_of(force):
    """(name, recipe) pairs: how a CustomGBForce is described, for comparison."""
    n_params = force.getNumPerParticleParameters()
    return (
        tuple(force.getPerParticleParameterName(i) for i in range(n_params)),
        force.getNumGlobalParameters(), force.getNumTabulatedFunctions(), force.getNumExclusions(),
        tuple((*force.getComputedValueParameters(i),) for i in range(force.getNumComputedValues())),
        tuple((*force.getEnergyTermParameters(i),) for i in range(force.getNumEnergyTerms())),
    )


def custom_gb(force) -> GBModel | str:
    """A ``CustomGBForce`` as a ``GBModel`` if it is one of OpenMM's OBC2/OBC1/HCT recipes;
    otherwise a string saying why not (for the caller's list of unsupported forces)."""
    from openmm import unit
    from openmm.app.internal import customgbforces as recipes

    if force.getNumEnergyTerms() == 0:
        return "CustomGBForce (no energy terms)"
    settings = dict(_SETTING.findall(force.getEnergyTermParameters(0)[0]))
    try:
        solvent, solute = float(settings["solventDielectric"]), float(settings["soluteDielectric"])
        kappa = float(settings.get("kappa", 0.0))
        cutoff = float(settings["cutoff"]) if "cutoff" in settings else None
    except (KeyError, ValueError):
        return "CustomGBForce (not one of OpenMM's GB recipes)"
    have = _recipe_of(force)
    classes = (("obc2", recipes.GBSAOBC2Force), ("obc1", recipes.GBSAOBC1Force), ("hct", recipes.GBSAHCTForce))
    for model, cls in classes:
        for sa in ("ACE", None):
            try:
                ref = cls(solventDielectric=solvent, soluteDielectric=solute, SA=sa, cutoff=cutoff, kappa=kappa)
            except Exception:  # noqa: BLE001 - a recipe that cannot be built for these settings is no match
                continue
            if _recipe_of(ref) != have:
                continue
            if kappa != 0:
                return (f"CustomGBForce ({model.upper()} with salt screening, kappa={kappa:g}/nm: diffmd's GB has no "
                        "salt term; build the System without implicitSolventKappa/implicitSolventSaltConc)")
            n = force.getNumParticles()
            rows = np.array([force.getParticleParameters(i) for i in range(n)], float).reshape(n, 3)
            charges, offset_radii, scaled = rows.T
            radii = offset_radii + _OFFSET
            screen = np.divide(scaled, offset_radii, out=np.zeros(n), where=offset_radii != 0)
            method = int(force.getNonbondedMethod())
            cut = None if method == 0 else _value(force.getCutoffDistance(), unit.nanometer)
            return GBModel(model, charges, radii, screen, solute, solvent,
                           _ACE_LITERAL / (4.0 * math.pi) if sa == "ACE" else 0.0, method, cut)
    return ("CustomGBForce (not one of OpenMM's OBC2/OBC1/HCT recipes from implicit/*.xml; GBn, GBn2 and "
            "edited expressions are not supported)")
