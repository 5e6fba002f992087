"""diffmd.kernels: array math only (pair geometry, neighbor tables, energy terms).

Kernels know nothing about systems, files or the engine. Every function takes
plain arrays in diffmd's units (nm, ps, amu, kJ/mol, e, K) and is pure, so
``jit``, ``vmap`` and ``grad`` compose over it.
"""
