"""Interaction-energy decomposition of a complex: E(complex) - E(receptor) - E(ligand) at one pose."""

from __future__ import annotations

import numpy as np

from ..kernels.errors import InputError
from ._system import System


def _atom_slices(complex_system: System, receptor: System, ligand: System, receptor_atoms, ligand_atoms):
    n_r, n_l = receptor.n_atoms, ligand.n_atoms
    if receptor_atoms is None:
        receptor_atoms = np.arange(n_r)
    if ligand_atoms is None:
        ligand_atoms = np.arange(n_r, n_r + n_l)
    receptor_atoms, ligand_atoms = np.asarray(receptor_atoms), np.asarray(ligand_atoms)
    if len(receptor_atoms) != n_r or len(ligand_atoms) != n_l:
        raise InputError(f"atom selections have {len(receptor_atoms)} and {len(ligand_atoms)} atoms, but the "
                         f"receptor and ligand have {n_r} and {n_l}")
    if receptor_atoms.max(initial=-1) >= complex_system.n_atoms or ligand_atoms.max(initial=-1) >= complex_system.n_atoms:
        raise InputError("atom selections go past the complex's atoms: pass receptor_atoms/ligand_atoms explicitly")
    names = complex_system.topology.atom_names
    for part, atoms in ((receptor, receptor_atoms), (ligand, ligand_atoms)):
        if tuple(names[i] for i in atoms) != part.topology.atom_names:
            raise InputError(f"atom names of {part.source or 'a part'} do not match the complex's selected atoms; "
                             "pass receptor_atoms= and ligand_atoms= (indices into the complex)")
    return receptor_atoms, ligand_atoms


def interaction_energy(complex_system: System, receptor: System, ligand: System, positions=None, *,
                       receptor_atoms=None, ligand_atoms=None, **energy_settings) -> dict:
    """Per-term interaction energy [kJ/mol] of a complex at one pose.

    E_int = E(complex) - E(receptor) - E(ligand), each part evaluated at the
    complex's coordinates of its atoms, with the same settings (e.g.
    ``implicit_solvent="obc2"``). Bonded terms cancel; what remains is the
    nonbonded (and solvation) interaction, term by term.

    Args:
        complex_system, receptor, ligand: systems with their own force-field
            parameters (e.g. the three prmtops tleap writes).
        positions: (N_complex, 3) [nm]; default: the complex's positions.
        receptor_atoms, ligand_atoms: indices into the complex (default: the
            receptor's atoms first, then the ligand's, as tleap orders them).
        energy_settings: passed to ``System.energy_fn`` (nonbonded, cutoff,
            implicit_solvent, precision, ...). Non-periodic methods only.

    Returns:
        ``{"units": "kJ/mol", "total": float, "terms": {name: float},
        "complex": {...}, "receptor": {...}, "ligand": {...}}``.
    """
    positions = complex_system.positions if positions is None else np.asarray(positions, float)
    if positions is None:
        raise InputError("the complex has no positions: pass positions= [nm]")
    if energy_settings.get("nonbonded", "nocutoff") == "pme":
        raise InputError("interaction energies need a non-periodic method (PME mixes every periodic image)")
    r_atoms, l_atoms = _atom_slices(complex_system, receptor, ligand, receptor_atoms, ligand_atoms)
    parts = {}
    for name, system, atoms in (("complex", complex_system, None), ("receptor", receptor, r_atoms),
                                ("ligand", ligand, l_atoms)):
        pos = positions if atoms is None else positions[atoms]
        params, energy_fn = system.energy_fn(**energy_settings)
        nbrs = energy_fn.neighbor_list(pos, None)
        terms = energy_fn.terms(params, pos, None, nbrs)
        parts[name] = {k: float(v) for k, v in terms.items()}
    terms = {k: parts["complex"][k] - parts["receptor"][k] - parts["ligand"][k] for k in parts["complex"]}
    return {"units": "kJ/mol", "total": float(sum(terms.values())), "terms": terms, **parts}
