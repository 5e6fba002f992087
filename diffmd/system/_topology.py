"""Host-side topology: names, elements, residues, chains and bonds (metadata only).

Nothing here is traced; writers (PDB, DCD, extended XYZ) and selections use it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.errors import InputError

# (symbol, atomic number, standard mass [amu]) for elements in biomolecular force fields
_ELEMENTS = [
    ("H", 1, 1.008), ("He", 2, 4.0026), ("Li", 3, 6.94), ("B", 5, 10.81), ("C", 6, 12.011),
    ("N", 7, 14.007), ("O", 8, 15.999), ("F", 9, 18.998), ("Ne", 10, 20.180), ("Na", 11, 22.990),
    ("Mg", 12, 24.305), ("Al", 13, 26.982), ("Si", 14, 28.085), ("P", 15, 30.974), ("S", 16, 32.06),
    ("Cl", 17, 35.45), ("Ar", 18, 39.948), ("K", 19, 39.098), ("Ca", 20, 40.078), ("Mn", 25, 54.938),
    ("Fe", 26, 55.845), ("Co", 27, 58.933), ("Ni", 28, 58.693), ("Cu", 29, 63.546), ("Zn", 30, 65.38),
    ("Se", 34, 78.971), ("Br", 35, 79.904), ("Rb", 37, 85.468), ("Cd", 48, 112.41), ("I", 53, 126.90),
    ("Cs", 55, 132.91),
]
SYMBOL_BY_NUMBER = {z: s for s, z, _ in _ELEMENTS}
NUMBER_BY_SYMBOL = {s.upper(): z for s, z, _ in _ELEMENTS}


def element_from_mass(mass: float) -> int:
    """Atomic number whose standard mass is closest to ``mass`` [amu] (0 for virtual sites).

    Hydrogen-mass repartitioned hydrogens (up to ~4 amu) still map to H.
    """
    if mass < 0.5:
        return 0
    if mass < 4.5:
        return 1
    best = min(_ELEMENTS[1:], key=lambda e: abs(e[2] - mass))
    return best[1]


def element_from_name(name: str, mass: float) -> int:
    """Atomic number guessed from an atom name as OpenMM guesses it for prmtops without elements.

    Names starting with CL, NA, MG or ZN are those ions; otherwise the first letter is
    the element symbol. Masses cannot be trusted there: files prepared for hydrogen
    mass repartitioning (DHFR's JAC.prmtop) carry 3.024 amu hydrogens and 11.968 amu
    oxygens. Falls back to ``element_from_mass`` when the first letter is no symbol.
    """
    upper = name.strip().upper()
    for prefix, z in (("CL", 17), ("NA", 11), ("MG", 12), ("ZN", 30)):
        if upper.startswith(prefix):
            return z
    z = NUMBER_BY_SYMBOL.get(upper[:1])
    return element_from_mass(mass) if z is None else z


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Atoms, residues, chains and bonds of a system.

    Attributes:
        atom_names: (N,) atom names.
        elements: (N,) atomic numbers (0 for virtual sites or unknown).
        residue_index: (N,) residue of each atom (0-based).
        residue_names: (R,) residue names.
        chain_index: (R,) chain of each residue (0-based).
        bonds: (B, 2) bonded atom pairs (0-based).
        atom_types: (N,) force-field atom type names ('' when unknown).
    """

    atom_names: tuple
    elements: np.ndarray
    residue_index: np.ndarray
    residue_names: tuple
    chain_index: np.ndarray
    bonds: np.ndarray
    atom_types: tuple = ()

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)

    @property
    def n_residues(self) -> int:
        return len(self.residue_names)

    def describe_atom(self, i: int) -> str:
        """``'atom 4 (CB, residue ALA 2)'``: the 0-based atom index, its name, and its residue's
        name and 1-based number (as Amber and PDB files count residues), for messages."""
        r = int(self.residue_index[i])
        return f"atom {i} ({self.atom_names[i].strip()}, residue {self.residue_names[r].strip()} {r + 1})"

    def element_symbols(self) -> list[str]:
        """Element symbols ('X' for unknown)."""
        return [SYMBOL_BY_NUMBER.get(int(z), "X") for z in self.elements]

    def subset(self, atoms) -> "Topology":
        """The topology of a subset of atoms (sorted indices), bonds inside it kept."""
        atoms = np.asarray(atoms)
        remap = np.full(self.n_atoms, -1)
        remap[atoms] = np.arange(len(atoms))
        keep = np.all(remap[self.bonds] >= 0, axis=1) if len(self.bonds) else np.zeros(0, bool)
        residues, res_new = np.unique(self.residue_index[atoms], return_inverse=True)
        return Topology(
            atom_names=tuple(self.atom_names[i] for i in atoms),
            elements=self.elements[atoms],
            residue_index=res_new,
            residue_names=tuple(self.residue_names[r] for r in residues),
            chain_index=self.chain_index[residues],
            bonds=remap[self.bonds[keep]] if len(self.bonds) else self.bonds,
            atom_types=tuple(self.atom_types[i] for i in atoms) if self.atom_types else (),
        )


def chains_from_bonds(n_residues: int, residue_index: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Chain index per residue: residues linked by bonds (connected components) share a chain."""
    parent = list(range(n_residues))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in bonds:
        ri, rj = find(int(residue_index[i])), find(int(residue_index[j]))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(r) for r in range(n_residues)]
    _, chain = np.unique(roots, return_inverse=True)
    # number chains in order of first appearance
    order = {}
    return np.array([order.setdefault(c, len(order)) for c in chain], dtype=np.int32)


def require_finite(values, what: str, topology: Topology | None = None) -> None:
    """Raise ``InputError`` if an (N, 3) per-atom array holds NaN or Inf, naming the first such atom.

    Args:
        values: (N, 3) positions [nm] or velocities [nm/ps].
        what: the array and where it came from, e.g. ``"ala.crd: positions"``.
        topology: names the atom (index, name, residue) when given; else only its index.
    """
    bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(values, dtype=np.float64)), axis=-1))
    if len(bad) == 0:
        return
    i = int(bad[0])
    atom = topology.describe_atom(i) if topology is not None and i < topology.n_atoms else f"atom {i}"
    raise InputError(f"{what} contain NaN or Inf at {len(bad)} atom(s), the first at {atom}; atom indices count "
                     "from 0: fix the coordinates (a blown-up run or a failed conversion writes such files)")
