"""Shared pieces of the diffmd benchmarks.

- **Workers.** Every engine under test runs in its own subprocess
  (``Worker``), so that its peak memory (``VmHWM``) is its own: JAX keeps what
  it allocates, and two JAX programs in one process would share one high-water
  mark. A worker imports ``benchmarks.<module>``, builds an engine with the
  module's ``make_engine(spec)``, and then answers requests from the parent
  over a pipe: call a method of the engine (set-up, accuracy check, extra
  measurements), run ``n`` timed units, report memory.
- **Interleaved timing.** ``interleaved`` gives each engine a short slice of
  work in turn, round after round (the machine is shared and its load moves),
  and ``paired_ratio`` compares two engines round by round, so a ratio is
  never taken between a quiet and a busy moment.
- **Records.** ``environment`` describes the machine, devices and versions;
  ``markdown_table`` and ``append_results`` write what a run found to
  ``RESULTS.md``.

An engine is any object; what the worker needs of it is ``run(n)`` (do ``n``
units of the timed work and return when they are finished) and whatever
methods the benchmark module calls. A method may raise ``NotAvailable`` to
say that the engine cannot do this setting (the reason is reported as "n/a").
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# Several JAX processes share one GPU here (the parent and one worker per
# engine); by default each would grab 75% of its memory at start-up. Set before
# any JAX backend starts (importing diffmd starts none); workers inherit it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


class NotAvailable(Exception):
    """An engine cannot run this setting; the message says why (reported as n/a)."""


class WorkerError(RuntimeError):
    """A worker failed (crashed, timed out, or raised); the message holds its traceback or log."""


# -- memory ----------------------------------------------------------------
def memory_mib() -> dict:
    """This process's peak (``VmHWM``) and current (``VmRSS``) resident memory [MiB].

    Where the process uses JAX on an accelerator, ``device_peak_mib`` adds the
    device's peak bytes in use (from ``Device.memory_stats``).
    """
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out["peak_mib" if key == "VmHWM" else "rss_mib"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if "peak_mib" not in out:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_mib"] = peak / (2**20 if sys.platform == "darwin" else 1024)
    jax = sys.modules.get("jax")  # only where the engine already uses JAX
    if jax is not None:
        try:
            device = jax.devices()[0]
            stats = device.memory_stats() if device.platform != "cpu" else None
        except Exception:  # no backend or no statistics: host memory is all there is
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out


# -- worker side -----------------------------------------------------------
def worker_main(module: str) -> None:
    """Serve one engine of ``benchmarks.<module>`` over stdin/stdout (runs in the subprocess)."""
    # Keep the protocol on a private copy of stdout and send everything else
    # (library prints, C-level output) to stderr, which the parent logs.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    mod = importlib.import_module(f"benchmarks.{module}")
    engine = None
    send({"ok": True, "result": {"memory": memory_mib()}})
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "init":
                engine = mod.make_engine(msg["spec"])
                result = None
            elif cmd == "call":
                method = getattr(engine, msg["method"], None)
                if method is None:
                    raise NotAvailable(f"{type(engine).__name__} does not measure {msg['method']!r}")
                result = method(**msg.get("kwargs", {}))
            elif cmd == "run":
                start = time.perf_counter()
                engine.run(msg["n"])
                result = time.perf_counter() - start
            elif cmd == "memory":
                result = memory_mib()
            else:
                raise ValueError(f"unknown worker command {cmd!r}")
            send({"ok": True, "result": result})
        except NotAvailable as exc:
            send({"ok": False, "unavailable": str(exc)})
        except Exception as exc:  # reported to the parent, which decides
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


# -- parent side -----------------------------------------------------------
class Worker:
    """One engine in its own Python subprocess.

    Args:
        module: benchmark module name (``benchmarks.<module>`` provides
            ``make_engine(spec)``).
        spec: JSON-able description of the engine, passed to ``make_engine``.
        timeout: default seconds to wait for any answer.
        env: extra environment variables for the subprocess.
    """

    def __init__(self, module: str, spec: dict, timeout: float = 1800.0, env: dict | None = None):
        self.module, self.spec, self.timeout = module, spec, timeout
        self._log = tempfile.NamedTemporaryFile(prefix=f"diffmd-bench-{module}-", suffix=".log", delete=False)
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks._harness import worker_main; " \
               f"worker_main({module!r})"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, env=full_env)
        self._buffer = b""
        self._started = False
        self.import_memory = None

    def _read(self, timeout: float):
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s{self._log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self._proc.wait()
                    raise WorkerError(f"{self.name}: worker exited with status {code}{self._log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- worker log ({self._log.name}) ---\n{text[-chars:]}" if text.strip() else ""

    @property
    def name(self) -> str:
        return str(self.spec.get("name", self.module))

    def _request(self, msg: dict, timeout: float | None = None):
        if not self._started:
            self.wait_ready(timeout)
        try:
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()
        except OSError as exc:  # the worker is gone (crashed, or killed for memory)
            raise WorkerError(f"{self.name}: worker unreachable ({exc}){self._log_tail()}") from exc
        reply = self._read(self.timeout if timeout is None else timeout)
        if reply["ok"]:
            return reply["result"]
        if "unavailable" in reply:
            raise NotAvailable(reply["unavailable"])
        raise WorkerError(f"{self.name}: {reply['error']}\n{reply['traceback']}")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the subprocess has imported its module, then build the engine."""
        if self._started:
            return
        ready = self._read(self.timeout if timeout is None else timeout)
        self.import_memory = ready["result"]["memory"]
        self._started = True
        self._request({"cmd": "init", "spec": self.spec}, timeout)

    def call(self, method: str, timeout: float | None = None, **kwargs):
        """Call ``engine.method(**kwargs)`` in the worker and return its (JSON) result."""
        return self._request({"cmd": "call", "method": method, "kwargs": kwargs}, timeout)

    def run(self, n: int, timeout: float | None = None) -> float:
        """Seconds the worker took for ``n`` units of timed work."""
        return float(self._request({"cmd": "run", "n": int(n)}, timeout))

    def memory(self) -> dict:
        """The worker's peak and current resident memory [MiB]."""
        return self._request({"cmd": "memory"})

    def close(self, kill: bool = False) -> None:
        """Stop the subprocess (politely unless ``kill``) and remove its log."""
        if self._proc.poll() is None:
            if not kill:
                try:
                    self._proc.stdin.write(b'{"cmd": "quit"}\n')
                    self._proc.stdin.flush()
                    self._proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()
        if not kill:
            Path(self._log.name).unlink(missing_ok=True)


# -- timing ----------------------------------------------------------------
def interleaved(workers: dict, rounds: int, round_seconds: float, max_per_round: int = 100_000) -> dict:
    """Time every worker in turn, round after round.

    One unit per worker first warms it up and sizes its slice to about
    ``round_seconds``; then each round runs every worker's slice once, the
    starting worker rotating from round to round.

    Returns:
        ``{name: {"units_per_round": n, "seconds": [seconds per unit, one per round]}}``.
    """
    names = list(workers)
    units = {}
    for name in names:
        first = workers[name].run(1)
        units[name] = max(1, min(max_per_round, int(round_seconds / max(first, 1e-9))))
    seconds = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds[name].append(workers[name].run(units[name]) / units[name])
    return {name: {"units_per_round": units[name], "seconds": seconds[name]} for name in names}


def paired_ratio(base: list, other: list) -> float:
    """Median over rounds of ``base[r] / other[r]`` (how many times faster ``other`` ran)."""
    return statistics.median(b / o for b, o in zip(base, other))


# -- records ---------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{sha}{' (uncommitted changes)' if dirty else ''}" if sha else "unknown"


def source_fingerprint() -> str:
    """Short hash of diffmd's Python sources (``diffmd/``, ``kernels/``, ``potentials/``).

    The working tree can change while a long run goes on; comparing the hash at
    the start and the end of a run tells whether every system ran the same code.
    """
    import hashlib

    digest = hashlib.sha256()
    for folder in ("diffmd", "kernels", "potentials"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                pass
    return digest.hexdigest()[:12]


def environment() -> dict:
    """Date, machine, devices, load and versions, for the record of a run."""
    import jax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem_gib = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gib = int(fh.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in jax.devices()],
        "versions": {"diffmd": _version("diffmd"), "jax": _version("jax"), "jaxlib": _version("jaxlib"),
                     "openmm": _version("openmm"), "jax-md": _version("jax-md"), "numpy": _version("numpy"),
                     "python": platform.python_version()},
        "commit": _git_commit(),
        "source": source_fingerprint(),
    }


def add_output_arguments(parser) -> None:
    """The options every benchmark shares: where results go, and how long a worker may take."""
    parser.add_argument("--results", default=None, help=f"Markdown file to append to (default {RESULTS})")
    parser.add_argument("--no-record", action="store_true", help="do not append to a results file")
    parser.add_argument("--json", default=None, help="also write the full record as JSON here")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for any one worker step")


def markdown_table(headers: list, rows: list) -> str:
    """A GitHub-flavoured Markdown table (cells are converted with ``str``)."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row + [""] * (len(headers) - len(row))) + " |" for row in cells]
    return "\n".join(lines)


def environment_lines(env: dict) -> list:
    """Markdown bullet lines describing ``env`` (see ``environment``)."""
    v = env["versions"]
    load = env.get("load_average_end")
    load_text = f"{env['load_average']} at start" + (f", {load} at end" if load else "")
    changed = env.get("source_end") not in (None, env.get("source"))
    warning = [f"- WARNING: diffmd's source files changed during this run (source {env['source']} at start, "
               f"{env['source_end']} at end): systems may have run different code"] if changed else []
    return warning + [
        f"- machine: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), "
        f"{env['memory_gib']} GiB; load average (1, 5, 15 min) {load_text}",
        f"- JAX devices: {', '.join(env['devices'])}",
        f"- versions: diffmd {v['diffmd']} (commit {env['commit']}, source {env['source']}), jax {v['jax']} (jaxlib {v['jaxlib']}), "
        f"openmm {v['openmm']}, jax-md {v['jax-md']}, numpy {v['numpy']}, python {v['python']}",
    ]


def append_results(path, title: str, env: dict, body: str, command: str = "") -> None:
    """Append one run's section (heading, environment, ``body``) to a RESULTS.md file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a") as fh:
        if new:
            fh.write("# diffmd benchmark results\n\nOne section per run, newest last, appended by "
                     "`diffmd bench NAME` (see README.md).\n")
        fh.write(f"\n## {title}, {env['date']}\n\n")
        if command:
            fh.write(f"Command: `{command}`\n\n")
        fh.write("\n".join(environment_lines(env)) + "\n\n" + body.rstrip() + "\n")
