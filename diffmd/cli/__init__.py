"""The ``diffmd`` command line: ``energy``, ``run`` (single runs, ensembles, OpenMM inputs), ``train``, ``bench``.

Owns argument parsing and the glue from flags to ``diffmd.md``, ``diffmd.ensemble`` and
``diffmd.learn``; flags and file outputs are a contract (see README).
"""

from ._main import build_parser, main

__all__ = [
    "build_parser",
    "main",
]
