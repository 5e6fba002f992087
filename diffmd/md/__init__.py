"""Molecular dynamics of one system: integrators, barostat, minimizer, the step chunk and host loop.

Owns the integrators (pure ``init``/``step`` pairs: ``velocity_verlet``, ``langevin_middle``,
``nose_hoover_chain``), the Monte Carlo barostat, energy minimization (L-BFGS and FIRE), the
one step of every run (``member_step``: scanned by single runs, vmapped by ensembles), the
runner (``make_chunk``: a jitted chunk of steps; ``run_chunks``: the one host loop of single runs
and ensembles, with neighbor-overflow replay, failure checks, clock and records;
``run_dynamics``: a single run through it, with reporters and checkpoints), the neighbor-table upkeep
between chunks and the failure diagnosis, ``simulate``/``prepare`` on a ``System``, and JAX's
persistent compilation cache (``enable_compilation_cache``).
Units: nm, ps, amu, kJ/mol, K.
"""

from ._barostat import (
    BarostatState,
    BarostatStep,
    apply_barostat,
    barostat_init,
    barostat_step,
    molecule_index,
    scale_molecules,
)
from ._compilation_cache import cache_disabled_by_env, default_cache_dir, enable_compilation_cache
from ._failures import (
    DEFAULT_MAX_TEMPERATURE_FACTOR,
    Failure,
    RunFacts,
    advice,
    check_max_temperature_factor,
    first_failure,
    model_energy_at,
    position_failure,
    reference_temperature,
    start_facts,
    temperatures,
)
from ._integrators import (
    Integrator,
    LangevinState,
    NoseHooverState,
    VerletState,
    heat_bath_energy,
    inverse_masses,
    kinetic_energy,
    langevin_middle,
    make_force_fn,
    maxwell_boltzmann,
    nose_hoover_chain,
    remove_com_velocity,
    temperature,
    velocity_verlet,
)
from ._minimize import MinimizeResult, minimize
from ._step import MEMBER_AXIS, member_step
from ._loop import (
    EQUILIBRATION_FRACTION,
    ChunkHooks,
    LoopOutcome,
    SpeedClock,
    after_equilibration,
    next_chunk,
    run_chunks,
    speed_note,
)
from ._runner import Carry, SimulationResult, make_chunk, run_dynamics
from ._simulate import INTEGRATORS, Prepared, barostat_key, make_integrator, prepare, resolve_physics, simulate
from ._tables import (
    MAX_REALLOCATIONS,
    any_overflow,
    capacities,
    neighbor_metadata,
    neighbor_tables,
    neighbor_template,
    reallocate,
    reallocation_margin,
    update_tables,
)

__all__ = [
    "BarostatState",
    "BarostatStep",
    "apply_barostat",
    "barostat_init",
    "barostat_step",
    "molecule_index",
    "scale_molecules",
    "cache_disabled_by_env",
    "default_cache_dir",
    "enable_compilation_cache",
    "DEFAULT_MAX_TEMPERATURE_FACTOR",
    "Failure",
    "RunFacts",
    "advice",
    "check_max_temperature_factor",
    "first_failure",
    "model_energy_at",
    "position_failure",
    "reference_temperature",
    "start_facts",
    "temperatures",
    "Integrator",
    "LangevinState",
    "NoseHooverState",
    "VerletState",
    "heat_bath_energy",
    "inverse_masses",
    "kinetic_energy",
    "langevin_middle",
    "make_force_fn",
    "maxwell_boltzmann",
    "nose_hoover_chain",
    "remove_com_velocity",
    "temperature",
    "velocity_verlet",
    "MinimizeResult",
    "minimize",
    "MEMBER_AXIS",
    "member_step",
    "EQUILIBRATION_FRACTION",
    "ChunkHooks",
    "LoopOutcome",
    "run_chunks",
    "Carry",
    "SimulationResult",
    "SpeedClock",
    "after_equilibration",
    "make_chunk",
    "next_chunk",
    "run_dynamics",
    "speed_note",
    "INTEGRATORS",
    "Prepared",
    "barostat_key",
    "make_integrator",
    "prepare",
    "resolve_physics",
    "simulate",
    "MAX_REALLOCATIONS",
    "any_overflow",
    "capacities",
    "neighbor_metadata",
    "neighbor_tables",
    "neighbor_template",
    "reallocate",
    "reallocation_margin",
    "update_tables",
]
