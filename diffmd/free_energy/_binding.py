"""Gradients of a binding free energy, and its reweighting to new force-field parameters.

Each leg of ``abfe`` decouples the ligand from state 0 (coupled; in the complex also
unrestrained) to state K-1 (decoupled). By the end-state identity, for any parameter theta
of the force field (charges, Lennard-Jones tables, torsions, GB radii: a leaf of the leg's
``AmberParams``)::

    dF_leg/dtheta = <dU_{K-1}/dtheta>_{K-1} - <dU_0/dtheta>_0

where <.>_k averages over every frame the leg's MBAR used (all windows) with MBAR's weights
for state k. The cycle ``dG = dF_solvent - dF_complex - dG_restraint`` then gives
dG/dtheta = dF_solvent/dtheta - dF_complex/dtheta: the restraint's standard-state
correction depends on the restraint's settings and kT only, never on the force field.

Reweighting evaluates the same frames at new parameters theta': the two end states at
theta' join MBAR as states without samples, and dG(theta') is the difference of their free
energies (with MBAR's uncertainty and the end states' effective sample sizes, which say
whether the frames still describe them). Its derivative at theta' = theta is exactly the
end-state identity above, which is how the tests check the gradient.

Both re-evaluate the leg's model in float64 (a ``"double"`` copy of it) at the stored
frames (``abfe(..., keep_frames=True)``), so the MBAR weights here come from those very
energies and the two agree to the solver's tolerance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError, SimulationError
from ..kernels.neighbors import is_table, update_neighbor_tables
from ..kernels.precision import cast_floats, resolve_precision
from ._mbar import mbar

#: MBAR's convergence tolerance here (as the legs' own analysis)
TOLERANCE = 1e-10


def _double(fn):
    """The energy function with float64 geometry and sums (restraints compute in their inputs' dtype)."""
    from ..potentials.alchemical import AlchemicalEnergy
    from ..potentials.neural import SumEnergy

    if isinstance(fn, SumEnergy):
        return dataclasses.replace(fn, parts=tuple(_double(f) for f in fn.parts))
    if isinstance(fn, AlchemicalEnergy):
        return dataclasses.replace(fn, amber_=dataclasses.replace(fn.amber_, precision=resolve_precision("double")))
    return fn


def _alchemical(base):
    return base[0] if isinstance(base, tuple) else base


def _window(base, amber, lam):
    """The leg's parameters with force field ``amber`` at lambdas ``lam`` = (sterics, electrostatics, restraints)."""
    alch = _alchemical(base)
    dtype = amber.charges.dtype
    alch = dataclasses.replace(alch, amber=amber, lambda_sterics=lam[0].astype(dtype),
                               lambda_electrostatics=lam[1].astype(dtype))
    if isinstance(base, tuple):
        rest = base[1]
        return (alch, dataclasses.replace(rest, lambda_restraints=lam[2].astype(rest.lambda_restraints.dtype)),
                *base[2:])
    return alch


def _overflowed(neighbors):
    flags = [t.overflow for t in jax.tree_util.tree_leaves(neighbors, is_leaf=is_table) if is_table(t)]
    return jnp.any(jnp.stack(flags)) if flags else jnp.asarray(False)


def _check_overflow(flag):
    if bool(flag):
        raise SimulationError("a stored frame needed more neighbor-table room than the table allocated from the "
                              "first frame: the leg's configurations spread too much for one table")


def leg_analysis(leg) -> dict:
    """The leg's frames re-evaluated in float64 (computed once, kept in ``leg.cache``).

    Returns a dict: ``x`` (S, N, 3) frames [nm] grouped by the window that sampled them,
    ``box`` (S, 3, 3) or None, ``lambdas`` (K, 3), ``n`` samples per window, ``amber`` the
    leg's force field (float64), ``u`` (K, S) reduced energies minus each frame's smallest
    (``shift``, (S,)), ``mbar`` their ``MBARResult`` and the jitted evaluators.
    """
    if "analysis" in leg.cache:
        return leg.cache["analysis"]
    if leg.frames is None or leg.energy_fn is None:
        raise InputError(f"the {leg.name} leg kept no frames: run abfe(..., keep_frames=True) to differentiate or "
                         "reweight its free energy")
    n, k = leg.frames.shape[:2]
    # member m sampled window m: frames grouped by window, in the order of the legs' u_kn
    x = jnp.asarray(np.swapaxes(leg.frames, 0, 1).reshape(k * n, *leg.frames.shape[2:]), jnp.float64)
    box = None if leg.boxes is None else jnp.asarray(np.swapaxes(leg.boxes, 0, 1).reshape(k * n, 3, 3))
    s = leg.schedule
    lambdas = jnp.asarray(np.stack([s.sterics, s.electrostatics, s.restraints], axis=1), jnp.float64)
    fn = _double(leg.energy_fn)
    base = cast_floats(leg.params, jnp.float64)
    amber = _alchemical(base).amber
    neighbors = fn.neighbor_list(np.asarray(x[0]), None if box is None else np.asarray(box[0]))

    @jax.jit
    def energies(amber, lambdas, x, box):
        """(S, P) energies [kJ/mol] of every frame in P windows."""
        def frame(item):
            xs, bs = item
            nb = update_neighbor_tables(neighbors, xs, bs)
            e = jax.vmap(lambda lam: fn(_window(base, amber, lam), xs, bs, nb))(lambdas)
            return e, _overflowed(nb)

        e, flags = jax.lax.map(frame, (x, box))
        return e, jnp.any(flags)

    @jax.jit
    def gradient(amber, lam, x, w, box):
        """sum_n w_n dU(lam)/d amber over the frames [kJ/mol per unit]."""
        def frame(carry, item):
            total, flag = carry
            xs, ws, bs = item
            nb = update_neighbor_tables(neighbors, xs, bs)
            g = jax.grad(lambda a: fn(_window(base, a, lam), xs, bs, nb))(amber)
            total = jax.tree_util.tree_map(lambda t, gi: t + ws * gi, total, g)
            return (total, flag | _overflowed(nb)), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, amber)
        (total, flag), _ = jax.lax.scan(frame, (zero, jnp.asarray(False)), (x, w, box))
        return total, flag

    e, flag = energies(amber, lambdas, x, box)
    _check_overflow(flag)
    u = np.asarray(e, np.float64).T / leg.kT  # (K, S)
    shift = u.min(axis=0)  # a constant per frame changes no free energy (see _legs.analyze)
    u = u - shift
    result = mbar(u, np.full(k, n), tolerance=TOLERANCE)
    out = {"x": x, "box": box, "lambdas": lambdas, "n": n, "amber": amber, "u": u, "shift": shift, "mbar": result,
           "energies": energies, "gradient": gradient}
    leg.cache["analysis"] = out
    return out


def _check_amber(leg, amber):
    ref = leg_analysis(leg)["amber"]
    if jax.tree_util.tree_structure(amber) != jax.tree_util.tree_structure(ref):
        raise InputError(f"the {leg.name} leg's parameters must be an AmberParams like the leg's own "
                         f"(result.{leg.name}.params), got {type(amber).__name__}")
    for got, want in zip(jax.tree_util.tree_leaves(amber), jax.tree_util.tree_leaves(ref)):
        if jnp.shape(got) != jnp.shape(want):
            raise InputError(f"the {leg.name} leg's parameters have a leaf of shape {jnp.shape(got)} where the "
                             f"leg's own has {jnp.shape(want)}: change values, not the topology")
    return cast_floats(amber, jnp.float64)


def leg_gradient(leg):
    """dF_leg/d(force field) = <dU_{K-1}/dtheta>_{K-1} - <dU_0/dtheta>_0 [kJ/mol per unit of each leaf].

    Returns an ``AmberParams`` pytree shaped like the leg's force field (float64), at the
    parameters the leg was run with (computed once, kept in ``leg.cache``).
    """
    if "gradient" in leg.cache:
        return leg.cache["gradient"]
    a = leg_analysis(leg)
    ends = []
    for state in (-1, 0):
        w = jnp.asarray(a["mbar"].weights(state), jnp.float64)
        g, flag = a["gradient"](a["amber"], a["lambdas"][state], a["x"], w, a["box"])
        _check_overflow(flag)
        ends.append(g)
    leg.cache["gradient"] = jax.tree_util.tree_map(jnp.subtract, *ends)
    return leg.cache["gradient"]


def leg_reweight(leg, amber) -> tuple[float, float, np.ndarray]:
    """(dF [kT], its standard deviation [kT], (2,) effective samples of the two end states) at force
    field ``amber``, from the leg's frames (MBAR with the new end states unsampled)."""
    a = leg_analysis(leg)
    amber = _check_amber(leg, amber)
    ends = a["lambdas"][jnp.asarray([0, len(a["lambdas"]) - 1])]
    e, flag = a["energies"](amber, ends, a["x"], a["box"])
    _check_overflow(flag)
    u_new = np.asarray(e, np.float64).T / leg.kT - a["shift"]
    k = a["u"].shape[0]
    if not np.all(np.isfinite(u_new)):
        raise InputError(f"the {leg.name} leg's energies at the new parameters are not finite")
    result = mbar(np.concatenate([a["u"], u_new]), np.concatenate([np.full(k, a["n"]), [0, 0]]),
                  tolerance=TOLERANCE)
    w = np.exp(result.log_weights[:, k:])
    effective = 1.0 / np.sum(w * w, axis=0)
    return float(result.differences[k, k + 1]), float(result.uncertainties[k, k + 1]), effective


def _legs_params(result, params):
    if not (isinstance(params, (tuple, list)) and len(params) == 2):
        raise InputError("params must be a pair (complex AmberParams, solvent AmberParams), e.g. "
                         "params_fn(theta) of diffmd.free_energy.ligand_charges(result)")
    return params


def binding_free_energy_gradient(result, params_fn=None, theta=None):
    """dG_bind/dtheta by the end-state identity on each leg's frames [kJ/mol per unit of theta].

    Args:
        result: an ``ABFEResult`` of ``abfe(..., keep_frames=True)``.
        params_fn: None, or ``params_fn(theta) -> (complex AmberParams, solvent AmberParams)``,
            a JAX function that puts your parameters into both legs' force fields (e.g. the
            ligand's charges into both; ``ligand_charges(result)`` makes one). The legs' own
            force fields are ``result.complex.params.amber`` and ``result.solvent.params.amber``
            (``result.complex.params[0].amber`` with a restraint).
        theta: the parameters ``params_fn`` takes (a pytree), at which the legs were run.

    Returns:
        Without ``params_fn``: ``(d dG/d complex AmberParams, d dG/d solvent AmberParams)``,
        the cycle's signs applied (a parameter shared by both legs, such as an LJ table, gets
        the sum of its two entries). With it: a pytree shaped like ``theta``, by ``jax.vjp``.
        Units: kJ/mol per unit of each leaf (charges: kJ/mol/e); divide by 4.184 for kcal/mol.
        The gradient is that of the parameters the legs were simulated with: ``params_fn(theta)``
        must give those (it is checked), since the frames were sampled there.

    Raises:
        InputError: frames not kept, a ``params_fn`` that does not give the legs' parameters.

    Example:
        >>> result = diffmd.free_energy.abfe(cb7, "B2", implicit_solvent="obc2", keep_frames=True)
        >>> q, params_fn = diffmd.free_energy.ligand_charges(result)
        >>> dg_dq = result.gradient(params_fn, q) / 4.184      # (L,) kcal/mol per e
    """
    if params_fn is not None:  # check before the (costlier) gradients
        params, vjp = jax.vjp(lambda t: tuple(_legs_params(result, params_fn(t))), theta)
        for leg, p in zip((result.complex, result.solvent), params):
            ref = leg_analysis(leg)["amber"]
            for got, want in zip(jax.tree_util.tree_leaves(_check_amber(leg, p)), jax.tree_util.tree_leaves(ref)):
                if not np.allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9):
                    raise InputError(f"params_fn(theta) is not the {leg.name} leg's force field: the gradient is "
                                     "that at the parameters the legs were simulated with; pass the theta of the run "
                                     "(use result.reweight for other parameters)")
    g_c = jax.tree_util.tree_map(jnp.negative, leg_gradient(result.complex))
    g_s = leg_gradient(result.solvent)
    if params_fn is None:
        return g_c, g_s
    cotangent = tuple(jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), g, p)
                      for g, p in zip((g_c, g_s), params))
    return vjp(cotangent)[0]


def reweighted_binding_free_energy(result, params) -> dict:
    """dG_bind at new force-field parameters, reweighted from the legs' frames (no new simulation).

    Args:
        result: an ``ABFEResult`` of ``abfe(..., keep_frames=True)``.
        params: ``(complex AmberParams, solvent AmberParams)``, e.g. ``params_fn(theta)``.

    Returns:
        dict: ``dg``, ``dg_error`` [kJ/mol] (MBAR's, the legs in quadrature), ``dg_kcal``,
        ``dg_error_kcal`` [kcal/mol] and ``effective_samples`` {leg: (coupled, decoupled)}:
        the Kish effective sample size of each leg's new end states among its frames. A few
        (compared with the samples per window) mean the frames no longer describe the new
        parameters: simulate there instead.
    """
    from ..kernels.constants import KCAL

    p_c, p_s = _legs_params(result, params)
    kT = result.complex.kT
    dc, ec, nc = leg_reweight(result.complex, p_c)
    ds, es, ns = leg_reweight(result.solvent, p_s)
    dg = (ds - dc) * kT - result.restraint_correction
    err = float(np.hypot(ec, es)) * kT
    return {"dg": dg, "dg_error": err, "dg_kcal": dg / KCAL, "dg_error_kcal": err / KCAL,
            "effective_samples": {"complex": nc.tolist(), "solvent": ns.tolist()}}


def ligand_charges(result):
    """``(charges, params_fn)``: the ligand's partial charges [e] and a function putting them in both legs.

    ``params_fn(q)`` returns ``(complex AmberParams, solvent AmberParams)`` with the ligand's
    charges set to ``q`` (L,) in both (the rest unchanged), for ``result.gradient`` and
    ``result.reweight``.

    Raises:
        InputError: the two legs' ligands have different charges (their atoms are not in one
            order): write the ``params_fn`` yourself.
    """
    c, s = result.complex, result.solvent
    amber_c = cast_floats(_alchemical(c.params).amber, jnp.float64)
    amber_s = cast_floats(_alchemical(s.params).amber, jnp.float64)
    lig_c, lig_s = jnp.asarray(c.ligand), jnp.asarray(s.ligand)
    q = amber_c.charges[lig_c]
    if q.shape != amber_s.charges[lig_s].shape or not np.allclose(q, amber_s.charges[lig_s], atol=1e-9):
        raise InputError("the complex's and the solvent leg's ligands differ in their charges (atom order?): write "
                         "params_fn(theta) -> (complex AmberParams, solvent AmberParams) yourself")

    def params_fn(charges):
        charges = jnp.asarray(charges, jnp.float64)
        return (dataclasses.replace(amber_c, charges=amber_c.charges.at[lig_c].set(charges)),
                dataclasses.replace(amber_s, charges=amber_s.charges.at[lig_s].set(charges)))

    return q, params_fn
