"""The package layout, read from the source (AST): layers, private modules, import cycles.

Layers, lowest first: ``diffmd.kernels`` (array math) <- ``diffmd.potentials`` (energy models)
<- the engine (``diffmd`` and its subpackages). Inside the engine the subpackages are ordered too
(``ENGINE_ORDER``): a subpackage imports only the ones before it, so the folders read bottom-up
as the architecture. A private module (``_x.py``) is imported only by modules of its own package;
everything else goes through the package's ``__init__``. Every import counts, module- or
function-level, and importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so a
cycle routed through a package's re-exports is a cycle.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: source folder -> installed package (pyproject's package-dir)
FOLDERS = {"diffmd": "diffmd", "kernels": "diffmd.kernels", "potentials": "diffmd.potentials"}
#: engine subpackages, lowest first; the top-level ``diffmd/__init__`` re-exports them all
ENGINE_ORDER = ("data", "system", "io", "md", "ensemble", "free_energy", "learn", "workflows", "interop", "cli")


def _modules() -> dict[str, str]:
    """module name -> path, for every .py of the three folders (packages under their own name)."""
    found = {}
    for folder, package in FOLDERS.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, os.path.join(ROOT, folder))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join([package] + parts)] = path
    return found


MODULES = _modules()


def _package(module: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    return module if MODULES[module].endswith("__init__.py") else module.rsplit(".", 1)[0]


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a dotted import target) lies in."""
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or None


def _imports(module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of ``module`` that lands inside diffmd.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``
    (the name is taken from the package's namespace, which runs its ``__init__``).
    """
    tree = ast.parse(open(MODULES[module]).read())
    base = _package(module)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{parent}.{node.module}" if node.module else parent
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target) if target.split(".")[0] == "diffmd" else None
            if resolved and resolved != module:
                out.append((resolved, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> tuple[int, int]:
    """(layer, engine rank): kernels (0), potentials (1), engine (2, ranked by ENGINE_ORDER)."""
    if module.startswith("diffmd.kernels"):
        return 0, 0
    if module.startswith("diffmd.potentials"):
        return 1, 0
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ENGINE_ORDER:
        return 2, 1 + ENGINE_ORDER.index(parts[1])
    return 2, len(ENGINE_ORDER) + 1  # the top-level package and its own modules sit above every subpackage


def test_every_engine_subpackage_is_ranked():
    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 1 and _package(m) == m
                   and not m.startswith(("diffmd.kernels", "diffmd.potentials"))}
    assert subpackages <= set(ENGINE_ORDER), f"add {sorted(subpackages - set(ENGINE_ORDER))} to ENGINE_ORDER"


def upward_imports(graph=None) -> list[str]:
    graph = GRAPH if graph is None else graph
    bad = []
    for module, deps in graph.items():
        for dep, line in deps:
            (own_layer, own_rank), (dep_layer, dep_rank) = _layer(module), _layer(dep)
            same_subpackage = module.split(".")[:2] == dep.split(".")[:2]
            if dep_layer > own_layer or (own_layer == dep_layer == 2 and dep_rank > own_rank and not same_subpackage):
                bad.append(f"{MODULES[module]}:{line}: {module} imports {dep} (a higher layer)")
    return bad


def private_imports(graph=None) -> list[str]:
    graph = GRAPH if graph is None else graph
    bad = []
    for module, deps in graph.items():
        for dep, line in deps:
            private = dep.rsplit(".", 1)[-1].startswith("_")
            if private and dep.rsplit(".", 1)[0] != _package(module):
                bad.append(f"{MODULES[module]}:{line}: {module} imports {dep}, a private module of another package; "
                           f"import from {dep.rsplit('.', 1)[0]} (re-export the name there)")
    return bad


def import_cycles(graph=None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = GRAPH if graph is None else graph
    edges = {m: sorted({d for d, _ in deps}) for m, deps in graph.items()}
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_upward_imports():
    assert not upward_imports(), "\n".join(upward_imports())


def test_no_imports_of_other_packages_private_modules():
    assert not private_imports(), "\n".join(private_imports())


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_package_inits_say_what_they_own_and_export_explicitly():
    for module, path in MODULES.items():
        if not path.endswith("__init__.py") or module == "diffmd.data" or _layer(module)[0] < 2:
            continue  # kernels/ and potentials/ are folders of public modules, imported by name
        tree = ast.parse(open(path).read())
        assert ast.get_docstring(tree), f"{path}: no docstring saying what the package owns"
        names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{path}: list the public names in __all__"


def test_no_public_name_of_a_package_hides_a_module():
    """``diffmd.simulate`` is a function and there is no module ``diffmd.simulate``, and so on."""
    import importlib

    for module, path in MODULES.items():
        if not path.endswith("__init__.py"):
            continue
        package = importlib.import_module(module)
        for name in getattr(package, "__all__", ()):
            sub = f"{module}.{name}"
            if sub in MODULES:
                value = getattr(package, name)
                assert getattr(value, "__name__", None) == sub, f"{module}.{name} is bound to {value!r}, hiding {sub}"


def test_documented_entry_points_resolve():
    """The README's Python calls after ``import diffmd`` alone."""
    import diffmd

    for dotted in ("load_amber", "from_openmm", "load_openmm", "simulate", "prepare", "minimize", "interaction_energy",
                   "ensemble.prepare", "ensemble.simulate", "ensemble.buckets", "replica_exchange.TemperatureExchange",
                   "datasets.generate", "train.train", "train.load_model", "train.run_config",
                   "trajectory_grad.make_trajectory_fn", "reweighting.fit", "potentials.neural.sum_potentials",
                   "free_energy.mbar", "kernels.constants.BOLTZMANN", "data.t4_lysozyme", "units.BOLTZMANN"):
        obj = diffmd
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert callable(obj) or dotted.endswith("BOLTZMANN"), dotted


@pytest.mark.parametrize("bad_source, expect", [
    ("kernels", "upward"), ("potentials", "upward"), ("private", "private"), ("cycle", "cycle"),
])
def test_the_checks_catch_what_they_should(bad_source, expect):
    """Each check flags a hand-made violation (so the checks above can fail)."""
    graph = {m: list(deps) for m, deps in GRAPH.items()}
    if bad_source == "kernels":
        graph["diffmd.kernels.neighbors"].append(("diffmd.potentials.amber", 1))
        assert upward_imports(graph)
    elif bad_source == "potentials":
        graph["diffmd.potentials.amber"].append(("diffmd.md", 1))
        assert upward_imports(graph)
    elif bad_source == "private":
        graph["diffmd.ensemble._stack"].append(("diffmd.md._runner", 1))
        assert private_imports(graph)
    else:
        graph["diffmd.md._runner"].append(("diffmd.learn._train", 1))
        graph["diffmd.learn._train"].append(("diffmd.md._runner", 1))
        assert import_cycles(graph)


def test_ruff_passes():
    """``ruff check .`` with the configuration in pyproject.toml (skipped where ruff is not installed)."""
    ruff = shutil.which("ruff") or shutil.which("ruff", path=os.path.dirname(sys.executable))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install ruff)")
    out = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
