"""The benchmark systems and where their files come from.

Bundled systems resolve through ``diffmd.data``. DHFR JAC (23,558 atoms) is
not bundled: it ships in the openmmtools wheel (``openmmtools/data/dhfr/``).
It is looked up, in order, in ``$DIFFMD_DHFR_DIR``, in an installed
openmmtools (found with ``importlib.util.find_spec``, without importing it:
importing openmmtools imports pymbar, which can switch JAX to 64-bit for the
whole process), and in the cache folder; when missing, ``pip download
--no-deps openmmtools`` fetches the wheel into the cache and the two files are
unpacked from it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

DHFR_FILES = ("JAC.prmtop", "JAC.inpcrd")

SYSTEMS = {
    "t4l": {"source": "t4l", "nonbonded": "nocutoff", "cutoff": None,
            "description": "T4 lysozyme L99A + p-xylene, vacuum, no cutoff"},
    "t4l-cutoff": {"source": "t4l", "nonbonded": "cutoff", "cutoff": 1.0,
                   "description": "T4 lysozyme L99A + p-xylene, vacuum, 1.0 nm reaction-field cutoff, non-periodic"},
    "dhfr": {"source": "dhfr", "nonbonded": "cutoff", "cutoff": 0.9,
             "description": "DHFR JAC in water, 0.9 nm reaction-field cutoff, periodic"},
    "dhfr-pme": {"source": "dhfr", "nonbonded": "pme", "cutoff": 0.9,
                 "description": "DHFR JAC in water, PME 0.9 nm (tolerance 5e-4), periodic"},
    "t4l-obc2": {"source": "t4l", "nonbonded": "nocutoff", "cutoff": None, "implicit": "obc2",
                 "description": "T4 lysozyme L99A + p-xylene, GB-OBC2 implicit solvent with ACE, no cutoff"},
    "ala": {"source": "ala", "nonbonded": "nocutoff", "cutoff": None,
            "description": "alanine dipeptide, vacuum, no cutoff (smoke test)"},
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("DIFFMD_BENCH_CACHE", Path.home() / ".cache" / "diffmd" / "benchmarks"))


def _has_dhfr(folder) -> bool:
    return folder is not None and all((Path(folder) / f).is_file() for f in DHFR_FILES)


def dhfr_files(cache_dir=None, download: bool = True) -> tuple:
    """Paths of DHFR JAC's prmtop and inpcrd, downloading the openmmtools wheel if needed.

    Raises:
        FileNotFoundError: not found and ``download`` is False, or the download failed.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    candidates = []
    if os.environ.get("DIFFMD_DHFR_DIR"):
        candidates.append(Path(os.environ["DIFFMD_DHFR_DIR"]))
    spec = importlib.util.find_spec("openmmtools")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / "dhfr" for p in spec.submodule_search_locations]
    target = cache / "openmmtools" / "data" / "dhfr"
    candidates.append(target)
    for folder in candidates:
        if _has_dhfr(folder):
            return tuple(str(folder / f) for f in DHFR_FILES)
    if not download:
        raise FileNotFoundError(f"DHFR JAC files not found in {', '.join(map(str, candidates))}")
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"fetching DHFR JAC: pip download --no-deps openmmtools into {wheels}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "openmmtools", "-d", str(wheels)], capture_output=True, text=True)
    found = sorted(wheels.glob("openmmtools-*.whl"))
    if proc.returncode != 0 or not found:
        raise FileNotFoundError("could not download the openmmtools wheel that carries DHFR JAC "
                                f"(pip said: {proc.stderr.strip()[-500:]}); set DIFFMD_DHFR_DIR to a folder "
                                "holding JAC.prmtop and JAC.inpcrd")
    with zipfile.ZipFile(found[-1]) as wheel:
        for name in DHFR_FILES:
            wheel.extract(f"openmmtools/data/dhfr/{name}", cache)
    return tuple(str(target / f) for f in DHFR_FILES)


def resolve_files(system: str, cache_dir=None) -> tuple:
    """``(prmtop, coordinates)`` paths of a benchmark system."""
    import diffmd.data

    source = SYSTEMS[system]["source"]
    if source == "t4l":
        return diffmd.data.t4_lysozyme()
    if source == "ala":
        return diffmd.data.alanine_dipeptide()
    return dhfr_files(cache_dir)
