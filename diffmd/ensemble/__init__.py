"""Ensembles: many simulations stepped as one batched, compiled program.

Owns stacking members along a leading axis (``prepare``, ``buckets``, ``Ensemble``), padding
different systems to common shapes, the batched chunk (the single run's step, vmapped; NPT
with ``pressure=``) and the ensemble run
(``simulate``, ``EnsembleResult``, sharding over devices) and replica exchange
(``TemperatureExchange``, ``HamiltonianExchange``; also under ``diffmd.replica_exchange``).
Units: nm, ps, amu, kJ/mol, K.
"""

from . import replica_exchange
from ._padding import stack, unstack
from ._replica_exchange import HamiltonianExchange, TemperatureExchange
from ._runner import EnsembleResult, member_mesh, shard_members, simulate
from ._stack import (
    Ensemble,
    Member,
    batched_energy,
    batched_forces,
    buckets,
    make_ensemble_chunk,
    member_energy_fn,
    prepare,
)

__all__ = [
    "replica_exchange",
    "stack",
    "unstack",
    "HamiltonianExchange",
    "TemperatureExchange",
    "EnsembleResult",
    "member_mesh",
    "shard_members",
    "simulate",
    "Ensemble",
    "Member",
    "batched_energy",
    "batched_forces",
    "buckets",
    "make_ensemble_chunk",
    "member_energy_fn",
    "prepare",
]
