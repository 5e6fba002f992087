"""``diffmd bench``: run the benchmarks kept in the repository's ``benchmarks/`` folder.

The benchmarks compare diffmd with OpenMM and jax-md, so they need both and
are not part of the installed library. They live next to the package in the
source repository (``benchmarks/<name>.py``, one module per subcommand, shared
pieces in ``benchmarks/_harness.py``); this module only finds that folder and
hands the arguments to ``benchmarks.<name>.main(argv)``.

    diffmd bench energy [--systems t4l,t4l-cutoff,dhfr] [--repeats N] [--quick]

The folder is looked up in ``$DIFFMD_BENCHMARKS`` (a path to a ``benchmarks``
folder), then next to the ``diffmd`` package (an editable install or a
checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from ..kernels.errors import InputError


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder.

    Raises:
        InputError: diffmd is installed without its source repository.
    """
    env = os.environ.get("DIFFMD_BENCHMARKS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "benchmarks")  # diffmd/cli/_bench.py -> repo root
    for path in candidates:
        if (path / "__init__.py").is_file() and (path / "_harness.py").is_file():
            return path
    raise InputError(
        "the benchmarks are not installed with the diffmd package: they live in the source repository's "
        f"benchmarks/ folder (looked in {', '.join(str(p) for p in candidates)}). Clone the repository and "
        "install it editable (pip install -e '.[bench]'), or set DIFFMD_BENCHMARKS to its benchmarks/ folder")


def available(folder: Path) -> list[str]:
    """Benchmark names: the modules of ``folder`` that are not private."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def _import(folder: Path, name: str):
    # The folder is imported as the package ``benchmarks`` (its parent goes on
    # sys.path), so its modules and their worker subprocesses share one import
    # path; see benchmarks/_harness.py.
    root = str(folder.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    package = sys.modules.get("benchmarks")
    if package is not None and Path(getattr(package, "__file__", "") or "").resolve().parent != folder.resolve():
        raise InputError(f"another module named 'benchmarks' is already imported ({package.__file__}); "
                         "run diffmd bench in a fresh process")
    return importlib.import_module(f"benchmarks.{name}")


def main(argv=None) -> int:
    """Entry point of ``diffmd bench``; ``argv`` is what follows ``bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = benchmarks_dir()
    names = available(folder)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: diffmd bench {" + ",".join(names) + "} [options]\n\n"
              "Benchmarks against OpenMM and jax-md (see benchmarks/README.md); "
              "'diffmd bench NAME --help' lists a benchmark's options.")
        return 0 if argv else 2
    # command names may spell a module's underscores as hyphens (``grad-memory`` runs ``grad_memory``)
    name, rest = argv[0].replace("-", "_"), argv[1:]
    if name not in names:
        raise InputError(f"unknown benchmark {argv[0]!r}: choose one of {', '.join(names)}")
    return int(_import(folder, name).main(rest) or 0)
