"""JAX's persistent compilation cache: on by default in the CLI, one call for library users."""

import json
import os
import subprocess
import sys

import diffmd

ALANINE = diffmd.data.alanine_dipeptide()


def _run(args, cache_env):
    env = dict(os.environ, DIFFMD_COMPILATION_CACHE=cache_env, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _entries(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_cli_keeps_compiled_functions_and_reuses_them(tmp_path):
    cache = str(tmp_path / "cache")
    first = json.loads(_run(["-m", "diffmd.cli", "energy", *ALANINE], cache))
    written = _entries(cache)
    assert written, "the first run wrote no cache entries"
    second = json.loads(_run(["-m", "diffmd.cli", "energy", *ALANINE], cache))
    assert second == first
    # every compilation of the second run was found in the cache: nothing new written
    assert _entries(cache) == written


def test_cli_cache_turned_off_by_flag_or_environment(tmp_path):
    cache = str(tmp_path / "cache")
    _run(["-m", "diffmd.cli", "energy", *ALANINE, "--no-compilation-cache"], cache)
    assert not os.path.exists(cache)
    home = tmp_path / "home"  # with the variable off, the default folder under $XDG_CACHE_HOME stays empty too
    env_home = dict(os.environ, XDG_CACHE_HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "diffmd.cli", "energy", *ALANINE], capture_output=True, text=True,
                          env=dict(env_home, DIFFMD_COMPILATION_CACHE="off"), timeout=600)
    assert done.returncode == 0, done.stderr
    assert not home.exists()


def test_library_call_enables_cache_in_the_given_folder(tmp_path):
    cache = str(tmp_path / "lib-cache")
    script = (
        "import jax, jax.numpy as jnp, diffmd\n"
        f"print(diffmd.enable_compilation_cache({cache!r}))\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.arange(3.0)).sum()))\n"
    )
    out = _run(["-c", script], "off").split()  # the library call works whatever the CLI's variable says
    assert out[0] == cache
    assert _entries(cache)
