"""``diffmd run --replicas R`` and ``diffmd run --batch LIST.txt``: ensembles from the command line.

    diffmd run ala.prmtop ala.inpcrd --replicas 8 --steps 5000 --out ens
    diffmd run --batch systems.txt --replicas 4 --steps 5000 --out ens

Each line of ``LIST.txt`` is ``PRMTOP COORDS`` (blank lines and ``#`` comments are
skipped, relative paths are taken from the list file's folder, quotes allow spaces).
Every listed system (or the one given as ``PRMTOP COORDS``, or the demo) gets R
replicas, all stepped together as one batched program (``diffmd.ensemble``). Member
``m`` writes ``DIR/member-{m:03d}/`` with ``state.csv`` (first row step 0),
``trajectory.dcd`` and ``topology.pdb``, in list order with the replicas of one system
consecutive; ``DIR/ensemble.json`` holds the summary with the aggregate ns/day.

The flags mean what they mean for a single run (``diffmd run``); replica ``r`` of
the ensemble's member ``m`` uses seed ``--seed + m``. ``--pressure BAR`` gives every
replica its own Monte Carlo barostat (NPT; replicas of one system), and each member's
``state.csv`` then has its own changing ``volume_nm3`` and ``density_gcm3``. Different systems are padded to one
shape; with ``--nonbonded pme`` they share the finest PME grid any of them needs.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shlex
import sys
import time

import numpy as np

from .. import data, ensemble
from ..io import load_amber
from ..kernels.errors import InputError, UnsupportedError
from ..workflows import analyse_run, ligand_for_run
from ..md import EQUILIBRATION_FRACTION, after_equilibration, speed_note
from ._settings import enable_x64, run_settings, use_model

#: single-run settings an ensemble does not have, with the flag that sets them
_UNSUPPORTED = {"xyz": "--xyz", "resume": "--resume"}
#: settings consumed here rather than by ``diffmd.ensemble.prepare``
_RUN_KEYS = {"steps", "report_every", "out", "progress"}


def _replica_count(text: str) -> int:
    """``--replicas``' value: a positive integer (argparse reports the error with the usage, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give the number of replicas, "
                                         "e.g. --replicas 4") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} replicas: give at least 1 (1 is a single run, "
                                         "R > 1 runs R replicas as one ensemble)")
    return value


def add_ensemble_arguments(run: argparse.ArgumentParser) -> None:
    """Add ``--replicas`` and ``--batch`` to the ``diffmd run`` parser ``run``."""
    run.add_argument("--replicas", type=_replica_count, default=1, metavar="R",
                     help="run R replicas of every system as one batched ensemble (own seeds and noise); "
                          "member m writes DIR/member-{m:03d}/ and DIR/ensemble.json has the aggregate ns/day")
    run.add_argument("--batch", default=None, metavar="LIST.txt",
                     help="run every system listed in LIST.txt (one 'PRMTOP COORDS' per line, '#' comments; "
                          "relative paths from the list's folder) as one ensemble, with --replicas each; "
                          "with --nonbonded pme they share the finest PME grid any of them needs")


def read_batch_list(path: str) -> list[tuple[str, str]]:
    """The ``(prmtop, coords)`` pairs of a batch list file, in order.

    Args:
        path: text file, one ``PRMTOP COORDS`` per line; blank lines and ``#``
            comments are skipped; relative paths are resolved against the file's folder.

    Returns:
        list of absolute ``(prmtop, coords)`` paths.

    Raises:
        InputError: the file is missing or empty, a line does not hold two paths, or a
            listed file does not exist (the message names the file and line).
    """
    if not os.path.isfile(path):
        raise InputError(f"--batch {path}: no such file (give a text file with one 'PRMTOP COORDS' per line)")
    folder = os.path.dirname(os.path.abspath(path))
    pairs = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            try:
                fields = shlex.split(line, comments=True)
            except ValueError as exc:  # an unbalanced quote
                raise InputError(f"{path}, line {number}: cannot split {line.strip()!r} ({exc})") from None
            if not fields:
                continue
            if len(fields) != 2:
                raise InputError(f"{path}, line {number}: expected 'PRMTOP COORDS' (two paths), got "
                                 f"{len(fields)} field(s): {line.strip()!r}")
            resolved = tuple(os.path.normpath(os.path.join(folder, os.path.expanduser(f))) for f in fields)
            for kind, given, full in zip(("PRMTOP", "COORDS"), fields, resolved):
                if not os.path.isfile(full):
                    raise InputError(f"{path}, line {number}: {kind} file {given!r} not found (looked for {full}; "
                                     "relative paths are taken from the list file's folder)")
            pairs.append(resolved)
    if not pairs:
        raise InputError(f"{path}: lists no systems (one 'PRMTOP COORDS' per line; '#' starts a comment)")
    return pairs


def ensemble_settings(args) -> tuple[list[tuple[str, str]] | None, dict, dict]:
    """Validate the flags of an ensemble run.

    Returns:
        ``(pairs, prepare_kw, run_kw)``: the listed ``(prmtop, coords)`` pairs (None:
        the positional system or the demo), keyword arguments of
        ``diffmd.ensemble.prepare`` and of ``diffmd.ensemble.simulate`` (plus ``steps``).

    Raises:
        InputError: bad flags or list file. UnsupportedError: a flag ensembles lack.
    """
    replicas = getattr(args, "replicas", 1)
    if replicas is None or int(replicas) != replicas or replicas < 1:
        raise InputError(f"--replicas must be a positive integer, got {replicas!r}: give --replicas R with R >= 1")
    batch = getattr(args, "batch", None)
    pairs = None
    single = argparse.Namespace(**vars(args))  # run_settings fills defaults in; keep the caller's namespace as given
    if batch:
        if args.prmtop is not None:
            raise InputError("give either PRMTOP COORDS or --batch LIST.txt, not both (list every system in the "
                             "file)")
        pairs = read_batch_list(batch)
        single.prmtop, single.coords = pairs[0]  # the settings of a run of given files, not the demo's
    kw = run_settings(single)
    for key, flag in _UNSUPPORTED.items():
        if kw.pop(key, None) not in (None, False):
            raise UnsupportedError(f"{flag} is not available for ensembles (--replicas/--batch); run without it")
    accepted = set(inspect.signature(ensemble.prepare).parameters) - {"systems", "replicas"}
    prepare_kw = {"replicas": int(replicas)}
    run_kw = {}
    for key, value in kw.items():
        if key in _RUN_KEYS:
            run_kw[key] = value
        elif key in accepted:
            prepare_kw[key] = value
        elif value not in (None, False):
            raise UnsupportedError(f"the setting {key}={value!r} is not available for ensembles (--replicas/--batch)")
    return pairs, prepare_kw, run_kw


def _ranges(members) -> str:
    first, last = members[0], members[-1]
    return f"member-{first:03d}" if first == last else f"member-{first:03d}..{last:03d}"


def run_ensemble_from_args(args) -> int:
    """Run ``diffmd run`` with ``--replicas``/``--batch`` for parsed ``args``; returns the exit status.

    Loads the systems (``--batch`` list, positional ``PRMTOP COORDS``, or the demo),
    prepares the ensemble, runs it with ``diffmd.ensemble.simulate`` writing
    ``OUT/member-NNN/`` and ``OUT/ensemble.json``, and prints a summary.

    Raises:
        DiffmdError: bad input (``diffmd.cli.main`` prints it and exits with 2).
    """
    pairs, prepare_kw, run_kw = ensemble_settings(args)
    enable_x64()
    if pairs is None:
        if args.prmtop is None:
            pairs = [data.t4_lysozyme()]
            print(f"diffmd run: no input given, running the demo (T4 lysozyme L99A + p-xylene, 2,621 atoms) as "
                  f"{prepare_kw['replicas']} replicas", file=sys.stderr)
        else:
            pairs = [(args.prmtop, args.coords)]
    systems = [load_amber(prmtop, coords) for prmtop, coords in pairs]

    # each system's ligand (--ligand, or its prepare.json), checked before anything runs
    ligands = [ligand_for_run(prmtop, getattr(args, "ligand", None), system)
               for (prmtop, _), system in zip(pairs, systems)]
    steps = run_kw.pop("steps")
    t0 = time.perf_counter()
    if getattr(args, "model", None) is not None:
        if len(systems) > 1:
            raise UnsupportedError("--model runs replicas of one system (PRMTOP COORDS --replicas R), not --batch")
        prepare_kw = use_model(args, systems[0], prepare_kw)
    ens = ensemble.prepare(systems, **prepare_kw)
    factor = getattr(args, "max_temperature_factor", None)
    result = ensemble.simulate(ens, steps, report_every=run_kw["report_every"], out=run_kw["out"],
                               progress=run_kw["progress"],
                               **({} if factor is None else {"max_temperature_factor": factor or None}))
    wall = time.perf_counter() - t0
    out = os.path.abspath(run_kw["out"])
    dt = prepare_kw["dt"]
    replicas = prepare_kw["replicas"]
    window = after_equilibration(result.steps, steps)
    temps = result.temperature[window]
    print(f"diffmd run: ensemble of {ens.size} members ({len(systems)} system(s) x {replicas} replica(s)), "
          f"{steps} steps of {dt * 1000:g} fs ({steps * dt:g} ps each) in {wall:.1f} s (set-up and compilation "
          "included)")
    note = speed_note(result.timed_steps, result.timed_seconds)
    print(f"  {note}" if note else f"  aggregate speed: {result.ns_per_day:.4g} ns/day over all members "
          f"({result.ns_per_day_member:.4g} ns/day per member; after compilation: {result.timed_steps} steps in "
          f"{result.timed_seconds:.1f} s)")
    lo, hi = int(result.steps[window][0]), int(result.steps[window][-1])
    print(f"  mean temperatures over steps {lo}-{hi}"
          + (f" (the first {EQUILIBRATION_FRACTION:.0%} of the run left out as equilibration):" if lo else ":"))
    for i, (system, (prmtop, _)) in enumerate(zip(systems, pairs)):
        members = [m for m, mb in enumerate(ens.members) if mb.system_index == i]
        mean_t = float(np.mean(temps[:, members]))
        volume = "" if result.volume is None or ens.carry.barostat is None else \
            f", mean volume {float(np.mean(result.volume[window][:, members])):.4g} nm^3"
        print(f"  system {i}: {os.path.basename(prmtop)} ({system.n_atoms} atoms): {_ranges(members)}, mean "
              f"temperature {mean_t:.1f} K{volume}")
    analysed = ""
    for m, member in enumerate(ens.members):
        if ligands[member.system_index] is not None:
            analyse_run(os.path.join(out, f"member-{m:03d}"), systems[member.system_index], ligands[member.system_index],
                        implicit_solvent=prepare_kw.get("implicit_solvent"))
            analysed = ", analysis.csv, pocket_rmsf.csv, analysis.json"
    print(f"  outputs in {out}: member-000/ .. member-{ens.size - 1:03d}/ (state.csv, trajectory.dcd, "
          f"topology.pdb{analysed} each) and ensemble.json")
    return 0
