"""One leg of an alchemical free-energy calculation: lambda windows as one vmapped ensemble.

A leg takes a system, its ligand and a ``LambdaSchedule`` of K windows and:

1. builds the alchemical model (``potentials.alchemical``), plus a restraint when given,
   and one parameter set per window (the lambdas are traced parameters);
2. runs the K windows as one ensemble (``diffmd.ensemble``) with Hamiltonian replica
   exchange between neighbouring windows after every iteration;
3. after every iteration evaluates every member's configuration in every window in one
   batched call, a (K, K) block of energies: the reduced energies u_k(x_n) of MBAR, so no
   trajectory has to be kept in memory;
4. drops the equilibration iterations, subsamples by the statistical inefficiency of the
   total reduced energy (as openmmtools' analysis does), and solves MBAR
   (``diffmd.free_energy.mbar``, JAX, float64).

The leg's free energy is f_last - f_first [kT]: decoupling the ligand (and, in the complex,
switching the restraint on).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.constants import BOLTZMANN
from ..kernels.errors import InputError, SimulationError
from ._mbar import mbar
from ._timeseries import statistical_inefficiency, subsample_indices


@dataclasses.dataclass(frozen=True)
class LambdaSchedule:
    """The windows of a leg: one value per window of each coupling (1 = on).

    Attributes:
        sterics: (K,) lambda_sterics of the ligand's Lennard-Jones.
        electrostatics: (K,) lambda_electrostatics of its charges.
        restraints: (K,) lambda_restraints of the receptor-ligand restraint (all 0 without one).
    """

    sterics: np.ndarray
    electrostatics: np.ndarray
    restraints: np.ndarray

    def __post_init__(self):
        arrays = [np.asarray(a, np.float64).reshape(-1) for a in (self.sterics, self.electrostatics, self.restraints)]
        if len({a.size for a in arrays}) != 1:
            raise InputError("a lambda schedule needs as many sterics, electrostatics and restraints values (one per "
                             f"window), got {[a.size for a in arrays]}")
        if arrays[0].size < 2:
            raise InputError(f"a lambda schedule needs at least 2 windows, got {arrays[0].size}")
        for name, a in zip(("sterics", "electrostatics", "restraints"), arrays):
            if not np.all((a >= 0) & (a <= 1)):
                raise InputError(f"lambda_{name} values must lie in [0, 1], got {a.tolist()}")
        for name, a in zip(("sterics", "electrostatics", "restraints"), arrays):
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return int(self.sterics.size)

    def to_json(self) -> dict:
        return {"lambda_sterics": self.sterics.tolist(), "lambda_electrostatics": self.electrostatics.tolist(),
                "lambda_restraints": self.restraints.tolist()}


def lambda_schedule(windows: int, restrained: bool = False) -> LambdaSchedule:
    """The default schedule of ``windows`` windows: charges off first, then Lennard-Jones.

    With a restraint (the complex leg) the first window is the unrestrained, fully coupled
    complex and the restraint is fully on from the second window on. The rest: about a
    third of the windows (at least 2) switch the charges off linearly at full sterics, the
    others switch the softcore Lennard-Jones off linearly with the charges off; the last
    window is the decoupled ligand.

    Raises:
        InputError: fewer than 3 windows (4 with a restraint).
    """
    least = 4 if restrained else 3
    if isinstance(windows, bool) or int(windows) != windows or windows < least:
        raise InputError(f"a leg needs at least {least} lambda windows (charges on and off, sterics off"
                         f"{', and the restraint-off start' if restrained else ''}), got {windows!r}: pass e.g. 12")
    n = int(windows) - (1 if restrained else 0)
    n_elec = max(2, (n + 2) // 3)
    n_steric = n - n_elec
    elec = np.concatenate([np.linspace(1.0, 0.0, n_elec), np.zeros(n_steric)])
    steric = np.concatenate([np.ones(n_elec), np.linspace(1.0, 0.0, n_steric + 1)[1:]])
    restraint = np.ones(n)
    if restrained:
        elec, steric, restraint = (np.concatenate([[1.0], a]) for a in (elec, steric, restraint))
        restraint[0] = 0.0
    else:
        restraint = np.zeros(n)
    return LambdaSchedule(steric, elec, restraint)


@dataclasses.dataclass(frozen=True)
class LegResult:
    """What one leg measured (reduced units kT unless said).

    Attributes:
        name: ``"complex"`` or ``"solvent"``.
        schedule: its windows.
        dg: f_last - f_first [kT]; dg_error: its standard deviation [kT].
        free_energies: (K,) f_k - f_0 [kT].
        overlap: (K, K) MBAR overlap matrix.
        u: (I, K, K) reduced energies: iteration i, member (the window it samples) m, window k.
        equilibration: iterations dropped from the start.
        statistical_inefficiency: g of the kept iterations (every g-th kept, rounded).
        samples_per_window: uncorrelated samples per window that MBAR used.
        acceptance: (K-1,) Hamiltonian-exchange acceptance of neighbouring windows.
        steps: steps per window; dt_ps: time step [ps]; wall_seconds: the dynamics' wall time
            (compilation included).
        kT: thermal energy [kJ/mol].
        seconds: wall time [s] of the set-up (models, minimization, first forces), the
            dynamics and the MBAR analysis.
    """

    name: str
    schedule: LambdaSchedule
    dg: float
    dg_error: float
    free_energies: np.ndarray
    overlap: np.ndarray
    u: np.ndarray
    equilibration: int
    statistical_inefficiency: float
    samples_per_window: int
    acceptance: np.ndarray
    steps: int
    dt_ps: float
    wall_seconds: float
    kT: float
    seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def ns_per_window(self) -> float:
        return self.steps * self.dt_ps / 1000.0

    def to_json(self) -> dict:
        kcal = self.kT / 4.184
        return {"dg_kt": self.dg, "dg_error_kt": self.dg_error, "dg_kcal_per_mol": self.dg * kcal,
                "dg_error_kcal_per_mol": self.dg_error * kcal, "dg_kj_per_mol": self.dg * self.kT,
                "dg_error_kj_per_mol": self.dg_error * self.kT, "windows": len(self.schedule),
                "schedule": self.schedule.to_json(), "free_energies_kt": self.free_energies.tolist(),
                "overlap_neighbours": [float(self.overlap[k, k + 1]) for k in range(len(self.schedule) - 1)],
                "exchange_acceptance": [None if np.isnan(a) else float(a) for a in self.acceptance],
                "ns_per_window": self.ns_per_window, "simulated_ns": self.ns_per_window * len(self.schedule),
                "iterations": int(self.u.shape[0]), "equilibration_iterations": self.equilibration,
                "statistical_inefficiency": self.statistical_inefficiency,
                "samples_per_window": self.samples_per_window, "wall_seconds": self.wall_seconds,
                "seconds": dict(self.seconds)}


def analyze(u: np.ndarray, equilibration: int, first: float = 0.0, last: float = 1.0):
    """MBAR on iterations of reduced energies ``u`` (I, K, K): (dg, dg_error, result, g, n).

    The iterations after ``equilibration`` are subsampled by the statistical inefficiency g
    of the summed own-window reduced energy sum_m u[i, m, m]; ``first``/``last`` keep that
    fraction of the subsampled iterations (for forward/reverse convergence curves).
    """
    kept = u[equilibration:]
    if kept.shape[0] < 2:
        raise InputError(f"{kept.shape[0]} iteration(s) left after {equilibration} of equilibration: run longer "
                         "(more steps per window) or drop fewer iterations")
    series = np.einsum("imm->i", kept)
    g = statistical_inefficiency(series)
    idx = subsample_indices(len(series), g)
    lo, hi = math.floor(first * len(idx) + 1e-9), math.ceil(last * len(idx) - 1e-9)
    idx = idx[lo:max(hi, lo + 1)]
    sub = kept[idx]  # (n, K members, K windows)
    n, k = sub.shape[0], sub.shape[1]
    u_kn = np.transpose(sub, (2, 1, 0)).reshape(k, k * n)  # samples grouped by the window they come from
    # a constant per sample changes no free energy: removing each sample's smallest value keeps the
    # numbers small (absolute energies are thousands of kT), so the solver's float64 sums stay exact;
    # 1e-10 of relative gradient is free energies to ~1e-10 kT, far below any statistical error
    u_kn = u_kn - u_kn.min(axis=0, keepdims=True)
    try:
        result = mbar(u_kn, np.full(k, n), tolerance=1e-10)
    except SimulationError as exc:
        raise SimulationError(f"{exc}. With {k} windows and {n} uncorrelated samples each, neighbouring windows do "
                              "not share configurations: use more windows (--windows) or longer runs") from None
    return float(result.differences[0, -1]), float(result.uncertainties[0, -1]), result, g, n


def _window_params(base, schedule: LambdaSchedule, restrained: bool):
    """One parameter set per window (the alchemical params, with the restraint's when restrained)."""
    out = []
    for s, e, r in zip(schedule.sterics, schedule.electrostatics, schedule.restraints):
        alch = base[0] if restrained else base
        dtype = alch.lambda_sterics.dtype
        alch = dataclasses.replace(alch, lambda_sterics=jnp.asarray(s, dtype),
                                   lambda_electrostatics=jnp.asarray(e, dtype))
        if restrained:
            rest = dataclasses.replace(base[1], lambda_restraints=jnp.asarray(r, base[1].lambda_restraints.dtype))
            out.append((alch, rest))
        else:
            out.append(alch)
    return out


class _CrossEnergies:
    """Ensemble move that records U_k(x_m) of every member m in every window k after each iteration.

    The members' own neighbor tables are valid for their positions, so the (M, K) block is
    one vmapped evaluation of the shared energy function (K parameter sets) at M configurations.
    """

    name = "cross_energies"

    def __init__(self, energy_fn, every: int):
        self.every = int(every)
        self.rows: list[np.ndarray] = []

        def block(params, positions, box, neighbors):
            def one(x, b, nb):
                return jax.vmap(lambda p: energy_fn(p, x, b, nb))(params)

            return jax.vmap(one, in_axes=(0, None if box is None else 0, 0))(positions, box, neighbors)

        self._block = jax.jit(block)

    def __call__(self, ens, step: int):
        if step % self.every == 0:
            e = self._block(ens.params, ens.carry.state.positions, ens.box, ens.carry.neighbors)
            self.rows.append(np.asarray(e, np.float64))
        return ens


def run_leg(name: str, system, ligand, schedule: LambdaSchedule, *, model_kwargs: dict, restraint=None,
            steps: int, steps_per_iteration: int, equilibration: int, temperature: float = 300.0,
            dt: float = 0.002, friction: float = 1.0, constraints: str | None = "hbonds",
            hydrogen_mass: float | None = None, precision: str = "mixed", seed: int = 0, minimize: bool = True,
            out: str | None = None, progress: bool | None = False, mode: str = "decouple") -> LegResult:
    """Run one leg and analyse it (see the module docstring).

    Args:
        name: the leg's name (``"complex"``, ``"solvent"``).
        system: a ``diffmd.System`` with positions.
        ligand: ligand atom indices in ``system``.
        schedule: the windows.
        model_kwargs: ``System.energy_fn`` settings (nonbonded, cutoff, implicit_solvent).
        restraint: None, or a restraint ``(params, energy_fn)`` (``potentials.restraints``).
        steps: steps per window (a multiple of ``steps_per_iteration``).
        steps_per_iteration: steps between exchanges and energy evaluations.
        equilibration: iterations dropped from the start before MBAR.
        temperature [K], dt [ps], friction [1/ps], constraints, hydrogen_mass [amu],
            precision, seed, minimize: as ``diffmd.ensemble.prepare`` (minimization in the
            fully coupled, unrestrained state).
        out: folder for the members' files (``member-000/`` ... one per window) or None.
        mode: ``"decouple"`` or ``"annihilate"`` (``alchemical_energy``).
    """
    from .. import ensemble
    from ..potentials.alchemical import alchemical_energy
    from ..potentials.neural import sum_potentials
    from ..ensemble import HamiltonianExchange

    t_setup = time.perf_counter()
    alch = alchemical_energy(system.energy_fn(precision=precision, **model_kwargs), ligand, mode=mode)
    params, energy_fn = alch if restraint is None else sum_potentials(alch, restraint)
    windows = _window_params(params, schedule, restraint is not None)
    ens = ensemble.prepare(system, replicas=len(schedule), temperature=temperature, seed=seed, params=windows,
                           potential=(windows[0], energy_fn), integrator="langevin", dt=dt, friction=friction,
                           constraints=constraints, hydrogen_mass=hydrogen_mass, precision=precision,
                           minimize=minimize)
    exchange = HamiltonianExchange(every=steps_per_iteration, seed=seed)
    cross = _CrossEnergies(energy_fn, steps_per_iteration)
    t0 = time.perf_counter()
    setup_seconds = t0 - t_setup
    result = ensemble.simulate(ens, steps, report_every=steps_per_iteration, out=out, progress=progress,
                               moves=[exchange, cross])
    wall = time.perf_counter() - t0
    kT = BOLTZMANN * temperature
    u = np.stack(cross.rows) / kT  # (I, M, K): member m samples window m
    t1 = time.perf_counter()
    dg, err, res, g, n = analyze(u, equilibration)
    del result
    return LegResult(name=name, schedule=schedule, dg=dg, dg_error=err, free_energies=res.free_energies,
                     overlap=res.overlap, u=u, equilibration=equilibration, statistical_inefficiency=float(g),
                     samples_per_window=n, acceptance=exchange.acceptance(), steps=int(steps), dt_ps=float(dt),
                     wall_seconds=wall, kT=kT, seconds={"setup": setup_seconds, "dynamics": wall,
                                                       "mbar": time.perf_counter() - t1})
