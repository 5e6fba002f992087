"""Absolute binding free energy: complex and solvent legs, a restraint and its standard-state correction.

The thermodynamic cycle (decoupling; Boresch et al. 2003, Mobley et al. 2006)::

    dG_bind = dF_solvent - dF_complex - dG_restraint

with dF_complex the free energy of decoupling the ligand in the complex while the
receptor-ligand restraint is switched on, dF_solvent that of decoupling it in solvent,
and dG_restraint = -kT ln(V0 / V_restraint) the analytic free energy of releasing the
decoupled, restrained ligand into the standard volume V0 = 1.66 nm^3 (1 M)
(``potentials.restraints``). A negative dG_bind means binding.

Each leg is one vmapped ensemble of lambda windows with Hamiltonian replica exchange,
analysed by MBAR (``diffmd.free_energy._legs``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from ..kernels.constants import BOLTZMANN, KCAL
from ..kernels.errors import InputError, SimulationError
from ._legs import LambdaSchedule, LegResult, analyze, lambda_schedule, run_leg
from ._selection import ligand_system, receptor_atoms, residue_atoms

RESTRAINTS = ("boresch", "flat-bottom")
RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class ABFEResult:
    """An absolute binding free energy [kJ/mol unless said].

    Attributes:
        dg: binding free energy dG_bind; dg_error: one standard deviation (the legs' MBAR
            errors added in quadrature; the correction is exact).
        restraint_correction: dG_restraint, the standard-state correction of the restraint.
        restraint: ``"boresch"`` or ``"flat-bottom"``; restraint_parameters: its settings (JSON).
        complex, solvent: the legs (``LegResult``, reduced units).
        convergence: dict with ``fraction`` (P,), ``ns_per_window`` (P,), and ``forward``,
            ``forward_error``, ``reverse``, ``reverse_error`` (P,) dG_bind [kJ/mol] from the
            first / last fraction of each leg's uncorrelated samples (NaN where so few samples
            leave MBAR without a solution).
        temperature: [K].
    """

    dg: float
    dg_error: float
    restraint_correction: float
    restraint: str
    restraint_parameters: dict
    complex: LegResult
    solvent: LegResult
    convergence: dict
    temperature: float

    @property
    def dg_kcal(self) -> float:
        return self.dg / KCAL

    def gradient(self, params_fn=None, theta=None):
        """dG/dtheta by the end-state identity on the legs' frames [kJ/mol per unit; / 4.184 for kcal/mol].

        Needs ``abfe(..., keep_frames=True)``; see ``binding_free_energy_gradient``.

        Example:
            >>> q, params_fn = diffmd.free_energy.ligand_charges(result)
            >>> dg_dq = result.gradient(params_fn, q)       # (L,) kJ/mol per e
        """
        from ._binding import binding_free_energy_gradient

        return binding_free_energy_gradient(self, params_fn, theta)

    def reweight(self, params) -> dict:
        """dG [kJ/mol] at ``params`` = (complex, solvent) ``AmberParams`` from the legs' frames
        (``reweighted_binding_free_energy``; needs ``keep_frames=True``)."""
        from ._binding import reweighted_binding_free_energy

        return reweighted_binding_free_energy(self, params)

    def to_json(self) -> dict:
        """``result.json``'s content."""
        return {"dg_kcal_per_mol": self.dg / KCAL, "dg_error_kcal_per_mol": self.dg_error / KCAL,
                "dg_kj_per_mol": self.dg, "dg_error_kj_per_mol": self.dg_error,
                "restraint_correction_kcal_per_mol": self.restraint_correction / KCAL,
                "restraint_correction_kj_per_mol": self.restraint_correction,
                "restraint": self.restraint, "restraint_parameters": self.restraint_parameters,
                "temperature_k": self.temperature,
                "cycle": "dg = legs.solvent.dg - legs.complex.dg - restraint_correction (decoupling free energies)",
                "legs": {"complex": self.complex.to_json(), "solvent": self.solvent.to_json()},
                "convergence_kcal_per_mol": {
                    "fraction": list(self.convergence["fraction"]),
                    "ns_per_window": list(self.convergence["ns_per_window"]),
                    **{k: [None if math.isnan(v) else v / KCAL for v in self.convergence[k]]
                       for k in ("forward", "forward_error", "reverse", "reverse_error")}}}


def _ligand_atoms(system, ligand, what):
    if isinstance(ligand, str):
        return residue_atoms(system, ligand)
    atoms = np.asarray(ligand).reshape(-1)
    if atoms.size == 0 or not np.issubdtype(atoms.dtype, np.integer):
        raise InputError(f"the {what} ligand must be a residue name or a list of atom indices, got {ligand!r}")
    return atoms


def _make_restraint(kind, system, ligand, atoms, kT, parameters):
    """``((params, energy_fn), correction [kJ/mol], JSON settings)`` of the complex's restraint."""
    from ..potentials import restraints as rs

    receptor = receptor_atoms(system, ligand)
    parameters = dict(parameters or {})
    if kind == "boresch":
        if atoms is None:
            atoms = rs.select_boresch_atoms(system.positions, receptor, ligand, system.topology.bonds,
                                            system.topology.elements)
        model = rs.boresch_restraint(system.positions, atoms, **parameters)
        correction = rs.boresch_correction(model[0], kT)
        settings = {"atoms": [int(a) for a in atoms],
                    **{f.name: float(getattr(model[0], f.name)) for f in dataclasses.fields(model[0])
                       if f.name != "lambda_restraints"}}
        return model, correction, settings
    x = np.asarray(system.positions)
    masses = np.asarray(system.masses)
    centroid = [np.average(x[g], axis=0, weights=masses[g]) for g in (receptor, ligand)]
    # the well holds the starting pose with room to spare: the start's centroid distance + 0.5 nm
    well = parameters.pop("well_radius", float(np.linalg.norm(centroid[1] - centroid[0])) + 0.5)
    model = rs.flat_bottom_restraint(receptor, ligand, masses, well_radius=well, **parameters)
    box = None if system.box is None else float(abs(np.linalg.det(np.asarray(system.box))))
    correction = rs.flat_bottom_correction(float(model[0].spring_constant), well, kT, box_volume=box)
    return model, correction, {"well_radius_nm": well, "spring_constant_kj_per_mol_nm2": float(model[0].spring_constant),
                               "receptor_atoms": len(receptor)}


def abfe(complex_system, ligand, *, solvent_system=None, solvent_ligand=None, nonbonded: str | None = None,
         cutoff: float | None = None, implicit_solvent: str | None = None, windows: int = 12,
         complex_schedule: LambdaSchedule | None = None, solvent_schedule: LambdaSchedule | None = None,
         ns_per_window: float = 1.0, steps_per_iteration: int = 500, equilibration: float = 0.1,
         restraint: str = "boresch", restraint_atoms=None, restraint_parameters: dict | None = None,
         temperature: float = 300.0, dt: float = 0.002, friction: float = 1.0, constraints: str | None = "hbonds",
         hydrogen_mass: float | None = None, precision: str = "mixed", seed: int = 0, minimize: bool = True,
         mode: str = "decouple", convergence_points: int = 10, out: str | None = None,
         progress: bool | None = False, keep_frames: bool = False) -> ABFEResult:
    """Absolute binding free energy of a ligand by alchemical decoupling (see the module docstring).

    Both legs run their windows as one ``vmap``-ed ensemble with Hamiltonian replica
    exchange every ``steps_per_iteration`` steps; after each exchange every configuration is
    evaluated in every window (one batched call), and MBAR (JAX, float64) turns the reduced
    energies into free energies after the equilibration is dropped and the rest subsampled
    by its statistical inefficiency.

    Args:
        complex_system: ``diffmd.System`` of receptor + ligand (with positions: the bound pose).
        ligand: the ligand's residue name (e.g. ``"B2"``) or its atom indices.
        solvent_system: the solvent leg's system (the ligand in a water box). Default: in
            implicit solvent, or for a complex without a box, the complex's ligand alone
            (``ligand_system``); with a periodic complex in explicit water it must be given.
        solvent_ligand: the ligand in ``solvent_system`` (default: ``ligand`` if a residue
            name, else the whole solvent system must be given with this).
        nonbonded, cutoff, implicit_solvent: ``System.energy_fn`` settings of both legs.
        windows: lambda windows per leg (``lambda_schedule``; the complex's first window is the
            unrestrained complex).
        complex_schedule, solvent_schedule: explicit ``LambdaSchedule`` s instead.
        ns_per_window: simulated time of each window [ns] (rounded up to whole iterations).
        steps_per_iteration: steps between exchanges and energy evaluations (samples).
        equilibration: fraction of each leg's iterations dropped from the start, in [0, 1).
        restraint: ``"boresch"`` (default; six atoms chosen by ``select_boresch_atoms`` unless
            ``restraint_atoms``) or ``"flat-bottom"`` (mass-weighted centroids; well radius the
            start's centroid distance + 0.5 nm unless ``restraint_parameters['well_radius']``).
        restraint_parameters: keyword arguments of ``boresch_restraint`` /
            ``flat_bottom_restraint`` (force constants in kJ/mol/nm^2, kJ/mol/rad^2).
        temperature [K], dt [ps], friction [1/ps], constraints, hydrogen_mass [amu], precision,
            seed, minimize: the dynamics (Langevin), as ``diffmd.ensemble.prepare``.
        mode: ``"decouple"`` (default) or ``"annihilate"`` (``alchemical_energy``).
        convergence_points: points of the forward/reverse convergence curves.
        out: folder for ``result.json``, ``overlap.png``, ``convergence.png`` and each leg's
            member files (``complex/member-000/`` ... one per window); None writes nothing.
        progress: progress bars.
        keep_frames: keep each leg's configurations that MBAR used (``LegResult.frames``), which
            ``ABFEResult.gradient`` and ``ABFEResult.reweight`` need. During the run every
            iteration's K x N x 3 positions are held (float32): 12 windows x 1000 iterations x
            5000 atoms is 720 MB; afterwards only the subsampled iterations.

    Returns:
        ``ABFEResult`` (``.to_json()`` is what ``result.json`` holds).

    Raises:
        InputError: an unknown residue name, too few windows, a too short run, an unknown
            restraint, a missing solvent leg in explicit water, x64 off.

    Example:
        >>> jax.config.update("jax_enable_x64", True)
        >>> complex_ = diffmd.load_amber(*diffmd.data.cb7_b2())
        >>> result = diffmd.free_energy.abfe(complex_, "B2", implicit_solvent="obc2", ns_per_window=0.5)
        >>> result.dg_kcal, result.dg_error / 4.184
    """
    import jax

    if not jax.config.read("jax_enable_x64"):
        raise InputError('abfe needs float64 (MBAR and mixed precision): call jax.config.update("jax_enable_x64", '
                         'True) at start-up')
    if restraint not in RESTRAINTS:
        raise InputError(f"unknown restraint {restraint!r}: choose one of {', '.join(RESTRAINTS)}")
    if not (isinstance(equilibration, (int, float)) and 0.0 <= equilibration < 1.0):
        raise InputError(f"equilibration is the fraction of iterations dropped, in [0, 1), got {equilibration!r}")
    if isinstance(steps_per_iteration, bool) or int(steps_per_iteration) != steps_per_iteration \
            or steps_per_iteration < 1:
        raise InputError(f"steps_per_iteration must be a positive number of steps, got {steps_per_iteration!r}")
    if not (isinstance(ns_per_window, (int, float)) and ns_per_window > 0 and dt > 0):
        raise InputError(f"ns_per_window and dt must be positive, got {ns_per_window!r} ns and {dt!r} ps")
    if int(convergence_points) != convergence_points or convergence_points < 1:
        raise InputError(f"convergence_points must be a positive integer, got {convergence_points!r}")
    if complex_system.positions is None:
        raise InputError(f"{complex_system.source or 'the complex'} has no positions: load it with coordinates")
    steps_per_iteration = int(steps_per_iteration)
    iterations = max(1, math.ceil(round(ns_per_window * 1000.0 / dt, 6) / steps_per_iteration))
    n_eq = math.floor(equilibration * iterations)
    if iterations - n_eq < 2:
        raise InputError(f"{ns_per_window} ns per window at dt {dt} ps is {iterations} iteration(s) of "
                         f"{steps_per_iteration} steps, {iterations - n_eq} after equilibration; MBAR needs at least "
                         "2: run longer or use fewer steps per iteration")
    steps = iterations * steps_per_iteration

    ligand_c = _ligand_atoms(complex_system, ligand, "complex")
    complex_schedule = complex_schedule or lambda_schedule(windows, restrained=True)
    if complex_schedule.restraints.max() <= 0.0:
        raise InputError("the complex schedule never switches the restraint on (lambda_restraints all 0): the "
                         "restraint's correction assumes it is fully on where the ligand is decoupled")
    if solvent_system is None:
        if implicit_solvent is None:
            raise InputError("without implicit solvent the solvent leg needs its own system (the ligand in a water "
                             "box): pass solvent_system= (on the command line --solvent-prmtop and --solvent-coords), "
                             "or choose implicit_solvent='obc2', where the solvent leg is the ligand alone")
        solvent_system, ligand_s = ligand_system(complex_system, ligand_c), None
    else:
        if solvent_system.positions is None:
            raise InputError(f"{solvent_system.source or 'the solvent system'} has no positions")
        given = solvent_ligand if solvent_ligand is not None else (ligand if isinstance(ligand, str) else None)
        if given is None:
            raise InputError("ligand was given as atom indices: give the solvent system's ligand too "
                             "(solvent_ligand=)")
        ligand_s = _ligand_atoms(solvent_system, given, "solvent")
    if ligand_s is None:
        ligand_s = np.arange(solvent_system.n_atoms)
    if solvent_schedule is None:
        solvent_schedule = lambda_schedule(windows)
        if len(ligand_s) == solvent_system.n_atoms and mode == "decouple":
            # the ligand alone keeps its own interactions: only its charges (their GB solvation) change,
            # so every window goes to them (identical sterics-only windows would leave MBAR singular)
            ramp = np.linspace(1.0, 0.0, windows)
            solvent_schedule = LambdaSchedule(np.where(ramp > 0.0, 1.0, 0.0), ramp, np.zeros(windows))
    kT = BOLTZMANN * temperature
    rest, correction, settings = _make_restraint(restraint, complex_system, ligand_c, restraint_atoms, kT,
                                                 restraint_parameters)
    model_kwargs = dict(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent)
    common = dict(model_kwargs=model_kwargs, steps=steps, steps_per_iteration=steps_per_iteration, equilibration=n_eq,
                  temperature=temperature, dt=dt, friction=friction, constraints=constraints,
                  hydrogen_mass=hydrogen_mass, precision=precision, seed=seed, minimize=minimize, progress=progress,
                  mode=mode, keep_frames=bool(keep_frames))
    if out is not None:
        os.makedirs(out, exist_ok=True)
    legs = {}
    for name, system, lig, schedule, restr in (("complex", complex_system, ligand_c, complex_schedule, rest),
                                               ("solvent", solvent_system, ligand_s, solvent_schedule, None)):
        legs[name] = run_leg(name, system, lig, schedule, restraint=restr,
                             out=None if out is None else os.path.join(out, name), **common)
    c, s = legs["complex"], legs["solvent"]
    dg = (s.dg - c.dg) * kT - correction
    err = math.hypot(s.dg_error, c.dg_error) * kT
    result = ABFEResult(dg=dg, dg_error=err, restraint_correction=correction, restraint=restraint,
                        restraint_parameters=settings, complex=c, solvent=s,
                        convergence=_convergence(c, s, correction, kT, int(convergence_points)),
                        temperature=float(temperature))
    if out is not None:
        write_outputs(result, out)
    return result


def _convergence(c: LegResult, s: LegResult, correction: float, kT: float, points: int) -> dict:
    """dG_bind [kJ/mol] from the first (forward) and last (reverse) fraction of each leg's samples."""
    fractions = np.arange(1, points + 1) / points
    curves = {k: [] for k in ("forward", "forward_error", "reverse", "reverse_error")}
    for f in fractions:
        for direction, (lo, hi) in (("forward", (0.0, f)), ("reverse", (1.0 - f, 1.0))):
            try:
                dc, ec = analyze(c.u, c.equilibration, lo, hi)[:2]
                ds, es = analyze(s.u, s.equilibration, lo, hi)[:2]
            except SimulationError:  # a short stretch of samples may not bridge every window: no point there
                dc = ec = ds = es = math.nan
            curves[direction].append((ds - dc) * kT - correction)
            curves[direction + "_error"].append(math.hypot(ec, es) * kT)
    production_ns = (c.u.shape[0] - c.equilibration) / c.u.shape[0] * c.ns_per_window
    return {"fraction": fractions.tolist(), "ns_per_window": (fractions * production_ns).tolist(), **curves}


def write_outputs(result: ABFEResult, out: str) -> None:
    """``out/result.json``, ``out/overlap.png`` and ``out/convergence.png``."""
    from ._plots import plot_convergence, plot_overlap

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RESULT_FILE), "w") as fh:
        json.dump(result.to_json(), fh, indent=1)
        fh.write("\n")
    plot_overlap({"complex": result.complex.overlap, "solvent": result.solvent.overlap},
                 os.path.join(out, "overlap.png"))
    plot_convergence(result.convergence, os.path.join(out, "convergence.png"))
