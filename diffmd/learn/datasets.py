"""``diffmd.datasets``: training data from simulation (positions [nm], energies [kJ/mol], forces [kJ/mol/nm])."""

from ._datasets import (
    FORMAT,
    UNITS,
    VERSION,
    Dataset,
    batch_indices,
    generate,
    iterate_batches,
    label_frames,
    load,
    load_npz,
    read_extxyz,
    save_npz,
    split,
    table_for_frames,
    write_extxyz,
)

__all__ = [
    "FORMAT",
    "UNITS",
    "VERSION",
    "Dataset",
    "batch_indices",
    "generate",
    "iterate_batches",
    "label_frames",
    "load",
    "load_npz",
    "read_extxyz",
    "save_npz",
    "split",
    "table_for_frames",
    "write_extxyz",
]
