"""``diffmd.replica_exchange``: temperature and Hamiltonian swaps between ensemble members.

Moves for ``diffmd.ensemble.simulate(..., moves=[...])``; energies in kJ/mol, kT in kJ/mol.
"""

from ._replica_exchange import (
    HamiltonianExchange,
    TemperatureExchange,
    accept_swaps,
    exchange_log_ratio,
    swap_configurations,
    swap_permutation,
    temperature_log_ratio,
)

__all__ = [
    "HamiltonianExchange",
    "TemperatureExchange",
    "accept_swaps",
    "exchange_log_ratio",
    "swap_configurations",
    "swap_permutation",
    "temperature_log_ratio",
]
