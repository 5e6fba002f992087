"""Protein-ligand workflows: preparation from PDB + SDF, and pose/pocket/interaction analysis."""

from ._demo_inputs import write_t4_lysozyme_inputs as write_t4_lysozyme_inputs
from ._deps import INSTALL_HINT as INSTALL_HINT
from ._deps import MissingExtraError as MissingExtraError
from ._deps import missing_requirements as missing_requirements
from ._prepare import PreparedComplex as PreparedComplex
from ._prepare import prepare as prepare
