"""JAX's persistent compilation cache: compiled step functions kept on disk between processes.

A diffmd run compiles its minimizer, its step chunk and a few hundred small set-up operations
(tens of seconds on a CPU); with the cache on, a second process running the same shapes loads
them from disk instead. The ``diffmd`` command turns it on by default (``--no-compilation-cache``
or ``DIFFMD_COMPILATION_CACHE=off`` turn it off); a library must not change JAX's global
configuration on import, so Python users call ``diffmd.enable_compilation_cache()`` once, before
their first jitted call.
"""

from __future__ import annotations

import os

import jax

#: environment variable: ``off`` (or ``0``/``false``/``no``) disables the CLI's cache, a path moves it
ENV_VAR = "DIFFMD_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")


def default_cache_dir() -> str:
    """``$DIFFMD_COMPILATION_CACHE`` if it names a folder, else ``$XDG_CACHE_HOME/diffmd/jax``
    (``~/.cache/diffmd/jax`` when XDG_CACHE_HOME is unset)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env.lower() not in _OFF:
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffmd", "jax")


def cache_disabled_by_env() -> bool:
    """True when ``DIFFMD_COMPILATION_CACHE`` says off (``off``, ``0``, ``false`` or ``no``)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _OFF


def enable_compilation_cache(path: str | None = None) -> str:
    """Keep every compiled function in a persistent cache folder; returns the folder used.

    Call once, before the first jitted call of the process (JAX opens the cache at its first
    compilation). ``path`` defaults to :func:`default_cache_dir`. Entries are keyed by the
    function, shapes, dtypes, JAX version and device, so a stale entry is never reused for other
    inputs; deleting the folder is always safe. Even sub-second compilations are kept: a run's
    set-up compiles hundreds of small operations whose total is seconds.
    """
    folder = os.path.abspath(os.path.expanduser(path or default_cache_dir()))
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
