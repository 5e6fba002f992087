"""diffmd.potentials: energy models built from kernels.

An energy model is a pair ``(params, energy_fn)`` with
``energy_fn(params, positions, box, neighbors) -> energy [kJ/mol]``.
"""
