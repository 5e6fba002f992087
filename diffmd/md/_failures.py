"""When a run has failed, and the likely cause (host side, between chunks).

A chunk of steps (``diffmd.md.make_chunk``) returns the potential and kinetic
energy of every step. :func:`first_failure` finds the first step where the run is no
longer physics: an energy that is NaN or Inf, or a kinetic temperature above
``max_temperature`` while the energies are still finite (a run that "explodes" without
a NaN: an unstable time step, or a neural potential pushed off its training data, can
heat a system to 10,000 K and more with finite energies). :func:`position_failure`
checks the positions after a chunk: an atom farther than ``POSITION_LIMIT_NM`` beyond
the starting structure's extent has left any physical range (positions are not wrapped
into a periodic box, but even unwrapped, diffusion takes microseconds to go 100 nm).

:func:`likely_causes` turns what the engine knows about a run (:class:`RunFacts`: time
step, constraints, hydrogen mass repartitioning, whether the start was minimized and
its largest force, a neural model's training-data energy range) into the causes worth
naming, instead of always blaming the time step.

The single-run loop (``diffmd.md``) and the ensemble loop
(``diffmd.ensemble``) share these functions: arrays with a trailing member
axis are an ensemble's.

Units: K, kJ/mol, nm, ps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.constants import BOLTZMANN
from ..kernels.errors import InputError

#: Default ``max_temperature_factor``: a run fails when its instantaneous kinetic temperature
#: exceeds this multiple of the reference temperature. The instantaneous temperature of a
#: healthy system fluctuates by sqrt(2 / n_dof) relative (0.2 for alanine dipeptide's 51
#: degrees of freedom, 0.03 for a 2,600-atom protein), so 5x is tens of standard deviations
#: away for any system of more than a few atoms, yet well below the thousands of kelvin an
#: exploding run reaches within a few steps. A strained, non-minimized start that heats to
#: 2-3x the target and cools again is not stopped.
DEFAULT_MAX_TEMPERATURE_FACTOR = 5.0
#: An atom farther than this beyond the starting structure's extent (its largest distance
#: from the starting centroid) has left the simulation [nm].
POSITION_LIMIT_NM = 1000.0
#: A largest starting force above this [kJ/mol/nm] marks a structure that needs minimizing
#: (a minimized biomolecule's largest force is ~10^2-10^3; overlapping atoms give 10^5 and more).
LARGE_START_FORCE = 1.0e4
#: Time steps [ps] above which bonds to hydrogen need constraints, and then mass repartitioning.
_DT_UNCONSTRAINED, _DT_CONSTRAINED, _DT_HMR = 0.001, 0.002, 0.004
_EPS_DT = 1e-9


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the engine knows about a run that can explain a failure (None: unknown).

    Attributes:
        dt_ps: time step [ps].
        constraints: ``'none'``, ``'hbonds'``, ``'allbonds'``, or another word for
            constraints the engine did not set up (``'openmm-system'``).
        hydrogen_mass: repartitioned hydrogen mass [amu], or None (none).
        minimized: whether the run started from a minimized structure.
        start_max_force: largest atomic force of the starting structure [kJ/mol/nm].
        start_max_force_atom: the atom (0-based) that has it.
        n_atoms: atoms of the system (for energies per atom).
    """

    dt_ps: float | None = None
    constraints: str | None = None
    hydrogen_mass: float | None = None
    minimized: bool | None = None
    start_max_force: float | None = None
    start_max_force_atom: int | None = None
    n_atoms: int | None = None


@dataclasses.dataclass(frozen=True)
class Failure:
    """The first failure found in a chunk.

    Attributes:
        kind: ``'nonfinite'``, ``'temperature'`` or ``'position'``.
        step: the step it was seen at (for ``'position'``, the chunk's last step).
        member: the ensemble member, or None for a single run.
        what: what happened, in words (the step is not included).
        potential_energy: the potential energy at that step [kJ/mol] (NaN if unknown).
    """

    kind: str
    step: int
    member: int | None
    what: str
    potential_energy: float = float("nan")


def check_max_temperature_factor(factor) -> float | None:
    """``factor`` as a float (None: no temperature check), or an ``InputError``."""
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.integer, np.floating)) \
            or not np.isfinite(factor) or factor <= 1.0:
        raise InputError(f"max_temperature_factor must be a number > 1 (the multiple of the reference temperature "
                         f"at which a run is stopped; default {DEFAULT_MAX_TEMPERATURE_FACTOR:g}) or None to turn the "
                         f"check off, got {factor!r}")
    return float(factor)


def reference_temperature(integrator: str, temperature: float, start_temperature: float) -> float:
    """The temperature the limit is a multiple of [K].

    A thermostat's target (``temperature``); for ``'verlet'`` (NVE, no target) the larger
    of ``temperature`` (that of the initial velocities) and the run's starting kinetic
    temperature, so an NVE run from given hot velocities is judged by where it started.
    """
    if integrator == "verlet":
        return max(float(temperature), float(start_temperature))
    return float(temperature)


def temperatures(kinetic_energy, n_dof):
    """Kinetic temperature [K] from kinetic energies [kJ/mol] (``n_dof`` broadcasts over a member axis)."""
    return 2.0 * np.asarray(kinetic_energy, np.float64) / (np.asarray(n_dof, np.float64) * BOLTZMANN)


def first_failure(potential_energy, kinetic_energy, n_dof, start_step: int, *, max_temperature_factor=None,
                  reference_temperature=None) -> Failure | None:
    """The first step of a chunk whose energies are not finite or whose temperature is too high.

    Args:
        potential_energy, kinetic_energy: (n_steps,) or (n_steps, M) energies after each
            step of the chunk [kJ/mol].
        n_dof: degrees of freedom (scalar, or (M,) per member).
        start_step: the step the chunk started from (its first step is ``start_step + 1``).
        max_temperature_factor: the temperature limit as a multiple of
            ``reference_temperature`` [K] (scalar or (M,)); None checks only finiteness.

    Returns:
        The earliest :class:`Failure` (the first member at that step), or None.
    """
    pot = np.asarray(potential_energy, np.float64)
    kin = np.asarray(kinetic_energy, np.float64)
    ensemble = pot.ndim == 2
    pot2, kin2 = (pot, kin) if ensemble else (pot[:, None], kin[:, None])
    finite = np.isfinite(pot2) & np.isfinite(kin2)
    temp = temperatures(kin2, np.atleast_1d(n_dof))
    hot = np.zeros_like(finite)
    if max_temperature_factor is not None:
        reference = np.broadcast_to(np.atleast_1d(np.asarray(reference_temperature, np.float64)), temp.shape[1:])
        limit = max_temperature_factor * reference
        hot = finite & (temp > limit)
    bad = ~finite | hot
    if not bad.any():
        return None
    k, m = (int(i) for i in np.argwhere(bad)[0])
    member = m if ensemble else None
    step = start_step + k + 1
    if not finite[k, m]:
        return Failure("nonfinite", step, member, f"the energy became NaN or Inf (potential {pot2[k, m]:.6g}, "
                                                  f"kinetic {kin2[k, m]:.6g} kJ/mol)", float(pot2[k, m]))
    later = np.argwhere(~finite[:, m])
    then = f"; the energy became NaN at step {start_step + int(later[0][0]) + 1}" if len(later) else ""
    return Failure("temperature", step, member,
                   f"the temperature reached {temp[k, m]:,.0f} K with finite energies (potential "
                   f"{pot2[k, m]:.6g} kJ/mol), above the limit of {float(limit[m]):,.0f} K "
                   f"(max_temperature_factor {max_temperature_factor:g} x the reference {float(reference[m]):g} K)"
                   f"{then}", float(pot2[k, m]))


def position_failure(positions, origin, radius, step: int, n_real=None) -> Failure | None:
    """An atom farther than ``POSITION_LIMIT_NM`` beyond the starting structure, or None.

    Args:
        positions: (N, 3) or (M, N, 3) positions after a chunk [nm].
        origin: (3,) or (M, 3) centroid of the starting positions [nm].
        radius: the starting structure's largest distance from ``origin`` [nm] (scalar or (M,)).
        step: the chunk's last step.
        n_real: (M,) real atoms per member (padding atoms after them are not checked), or None.
    """
    x = np.asarray(positions, np.float64)
    ensemble = x.ndim == 3
    x3 = x if ensemble else x[None]
    o = np.asarray(origin, np.float64).reshape(-1, 1, 3)
    distance = np.linalg.norm(x3 - o, axis=-1)
    if n_real is not None:
        distance = np.where(np.arange(x3.shape[1])[None, :] < np.asarray(n_real)[:, None], distance, 0.0)
    limit = np.broadcast_to(np.atleast_1d(np.asarray(radius, np.float64)), (x3.shape[0],)) + POSITION_LIMIT_NM
    far = ~(distance <= limit[:, None])  # NaN positions count as far
    if not far.any():
        return None
    m, atom = (int(i) for i in np.argwhere(far)[0])
    return Failure("position", step, m if ensemble else None,
                   f"atom {atom} is {distance[m, atom]:.4g} nm from the starting structure's centre, more than "
                   f"{POSITION_LIMIT_NM:g} nm beyond its extent: it has left the system")


def start_facts(forces, **facts) -> RunFacts:
    """``RunFacts(**facts)`` with the largest starting force taken from ``forces`` (N, 3) [kJ/mol/nm]."""
    f = np.linalg.norm(np.asarray(forces, np.float64), axis=-1)
    if f.size == 0 or not np.isfinite(f).all():
        return RunFacts(**facts)
    atom = int(np.argmax(f))
    return RunFacts(start_max_force=float(f[atom]), start_max_force_atom=atom, **facts)


def model_energy_ranges(energy_fn) -> list[tuple[int | None, tuple[float, float]]]:
    """``(part, (low, high))`` for each neural model in ``energy_fn`` that records the range of
    its training data's energies [kJ/mol per atom] (``part`` None: ``energy_fn`` itself is the
    model; else its index in a ``sum_potentials`` sum)."""
    own = getattr(energy_fn, "training_energy_range", None)
    if own is not None:
        return [(None, tuple(own))]
    return [(i, tuple(p.training_energy_range)) for i, p in enumerate(getattr(energy_fn, "parts", ()))
            if getattr(p, "training_energy_range", None) is not None]


def likely_causes(facts: RunFacts | None, *, model_energy: tuple[float, tuple[float, float]] | None = None
                  ) -> list[str]:
    """The causes of a failure that ``facts`` point to, most specific first (possibly none).

    Args:
        facts: what is known about the run.
        model_energy: ``(energy per atom, (low, high))`` of a neural model at (or near) the
            failure and its training data's range [kJ/mol per atom].
    """
    causes = []
    if model_energy is not None:
        e, (lo, hi) = model_energy
        if np.isfinite(e) and not lo <= e <= hi:
            causes.append(f"the neural model is evaluated outside its training data: its energy reached {e:.5g} "
                          f"kJ/mol per atom, outside the {lo:.5g} to {hi:.5g} kJ/mol per atom of the frames it was "
                          "trained on (train it on data that covers the structures the run visits)")
    if facts is None:
        return causes
    dt = facts.dt_ps
    # the time-step rules need to know the constraints and masses: not so for a system from
    # OpenMM, which brings its own (constraints='openmm-system')
    if dt is not None and facts.constraints in ("none", "hbonds", "allbonds"):
        fs = f"{dt * 1000:g} fs"
        if facts.constraints == "none" and dt > _DT_UNCONSTRAINED + _EPS_DT:
            causes.append(f"the time step {fs} is too long for unconstrained bonds to hydrogen (at most 1 fs "
                          "without constraints): constrain them (constraints='hbonds', --constraints hbonds) or use "
                          "dt <= 0.001")
        elif dt > _DT_CONSTRAINED + _EPS_DT and not facts.hydrogen_mass:
            causes.append(f"the time step {fs} needs hydrogen mass repartitioning (hydrogen_mass=1.5, --hmr 1.5, "
                          "with H-bond constraints) or dt <= 0.002")
        elif dt > _DT_HMR + _EPS_DT:
            causes.append(f"the time step {fs} is longer than the 4 fs that hydrogen mass repartitioning allows")
    force = facts.start_max_force
    if force is not None and force > LARGE_START_FORCE and facts.minimized is False:
        causes.append(f"the starting structure was not minimized and its largest force is {force:.3g} kJ/mol/nm "
                      f"(atom {facts.start_max_force_atom}): minimize first (minimize=True, --minimize)")
    return causes


def advice(facts: RunFacts | None, **known) -> str:
    """A sentence naming the likely cause(s) (see :func:`likely_causes`), or what was ruled out."""
    causes = likely_causes(facts, **known)
    if causes:
        return "Likely cause: " + "; ".join(causes) + "."
    if facts is None or facts.dt_ps is None:
        return ("The settings do not say why: check the force field or model, the starting structure (minimize "
                "first), and try a smaller time step.")
    parts = [f"time step {facts.dt_ps * 1000:g} fs with constraints={facts.constraints!r}"
             + (f" and hydrogen mass {facts.hydrogen_mass:g} amu" if facts.hydrogen_mass else "")]
    if facts.start_max_force is not None:
        parts.append(f"largest starting force {facts.start_max_force:.3g} kJ/mol/nm"
                     + (" (minimized)" if facts.minimized else ""))
    return ("None of the settings explains it (" + ", ".join(parts) + " are within the usual limits): check the "
            "force field or model and the starting structure.")


def model_energy_at(failure: Failure, energy_fn, n_atoms: int | None, evaluate=None):
    """``(energy per atom, range)`` of the run's neural model at a failure, for :func:`likely_causes`.

    When ``energy_fn`` is itself a model with a recorded range, the failure's potential
    energy is the model's. For a sum of potentials, ``evaluate(part_index)`` (if given)
    returns that part's energy [kJ/mol] at the chunk's last positions, or None.
    """
    ranges = model_energy_ranges(energy_fn)
    if not ranges or not n_atoms:
        return None
    part, span = ranges[0]
    if part is None:
        return failure.potential_energy / n_atoms, span
    if evaluate is None:
        return None
    for part, span in ranges:
        energy = evaluate(part)
        if energy is not None and np.isfinite(energy) and not span[0] <= energy / n_atoms <= span[1]:
            return energy / n_atoms, span
    return None
