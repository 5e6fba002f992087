"""Shared test set-up: float64 on, strict dtype promotion, OpenMM reference helpers."""

import gc
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# One persistent compilation cache per test session, in a fresh temporary folder: modules and the
# CLI subprocesses the tests start (which read DIFFMD_COMPILATION_CACHE) compile the same Amber
# energies, steps and minimizers again and again, and load them from disk after the first time.
# The folder never outlives the session, so no run reuses another's entries; pytest-xdist
# workers inherit the variable from the controller and share the folder.
_SESSION_CACHE_VAR = "DIFFMD_TEST_SESSION_CACHE"


def pytest_configure(config):
    from diffmd import enable_compilation_cache

    if _SESSION_CACHE_VAR not in os.environ:
        os.environ[_SESSION_CACHE_VAR] = tempfile.mkdtemp(prefix="diffmd-test-jax-cache-")
        config._diffmd_owns_session_cache = True
    folder = os.environ[_SESSION_CACHE_VAR]
    os.environ["DIFFMD_COMPILATION_CACHE"] = folder
    enable_compilation_cache(folder)


def pytest_unconfigure(config):
    if getattr(config, "_diffmd_owns_session_cache", False):
        shutil.rmtree(os.environ.pop(_SESSION_CACHE_VAR), ignore_errors=True)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diffmd", "data")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_functions():
    """Drop JAX's compiled executables after each test module.

    Every XLA:CPU executable holds a few memory maps; one process running the whole suite
    compiles thousands and crossed Linux's default limit of 65,530 maps per process
    (vm.max_map_count), after which the next compilation segfaulted. What a later module
    compiles again comes back from the session's compilation cache on disk.
    """
    yield
    jax.clear_caches()
    gc.collect()


def pytest_collection_modifyitems(config, items):
    # slow physics checks run only when asked for (-m slow) or with DIFFMD_SLOW=1
    if os.environ.get("DIFFMD_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or DIFFMD_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def rel_err(a, b):
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)


def assert_energy_close(got, want, rel, abs_floor=1e-6, what=""):
    got, want = float(got), float(want)
    assert abs(got - want) <= max(rel * abs(want), abs_floor), f"{what}: diffmd {got!r} vs OpenMM {want!r}"


def assert_forces_close(got, want, rel, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rms_err = np.sqrt(np.mean(np.sum((got - want) ** 2, axis=1)))
    rms = np.sqrt(np.mean(np.sum(want**2, axis=1)))
    assert rms_err <= rel * rms, f"{what}: force RMS error {rms_err:.3e} vs RMS force {rms:.3e} (ratio {rms_err / rms:.2e})"


@pytest.fixture
def load_example():
    """``load_example("name")``: ``examples/name.py`` imported as a module (example tests call its main)."""
    import importlib.util

    def load(name):
        path = os.path.join(os.path.dirname(DATA), os.pardir, "examples", f"{name}.py")
        spec = importlib.util.spec_from_file_location(name, os.path.normpath(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
