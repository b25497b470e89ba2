"""The layout shows the architecture, and its imports run one way.

- the top level of `anytimectl/` holds packages only (runtime, cli, comm, data, exchange, protocols, studies),
  besides `__init__.py` and `__main__.py`;
- no import cycle among anytimectl's modules (backends and plots included): the graph is built from each module's
  imports at module level (an import inside a function or under `if TYPE_CHECKING:` runs later, or never, and is
  left out, as is the implicit import of a module's parent package);
- nothing a run records names a module of anytimectl (metadata.json names its protocol by its short name,
  checkpoints hold data only), so the run directories and checkpoints written before a module moved still resume,
  plot and list.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from helpers import anytimectl, metadata

ROOT = Path(__file__).resolve().parent.parent
# where each installed package's sources are (pyproject.toml's package-dir)
SOURCES = {"anytimectl": ROOT / "anytimectl", "anytimectl.backends": ROOT / "backends",
           "anytimectl.plots": ROOT / "plots"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "anytimectl" and name.startswith(("anytimectl.backends", "anytimectl.plots")):
                continue
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 100  # every module of anytimectl, backends and plots was read
    assert {"anytimectl.runtime.launch", "anytimectl.runtime.errors"} <= graph["anytimectl.runtime.shell"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_top_level_holds_packages_only() -> None:
    top = ROOT / "anytimectl"
    loose = sorted(p.name for p in top.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules at the top level of anytimectl/: {loose}"
    packages = sorted(p.name for p in top.iterdir() if (p / "__init__.py").exists() and not p.is_symlink())
    assert packages == ["cli", "comm", "data", "exchange", "protocols", "runtime", "studies"]


def test_a_run_and_its_checkpoints_name_no_module(tmp_path) -> None:
    """A checkpointed run (one process, simulated backend) records no dotted anytimectl path in any file, and the
    protocol it records is found by its short name; a layout change cannot strand it."""
    anytimectl("train", "fmb", "--backend", "sim", "--workers", "0", "--steps", "4", "--checkpoint-every", "2",
               "--batch-size", "16", "--sim-example-time", "0", "--out", str(tmp_path), "--name", "run", "--quiet")
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and (run / "metadata.json") in files
    named = {str(p.relative_to(run)): sorted(set(re.findall(rb"anytimectl[./][a-z_]+", p.read_bytes())))
             for p in files}
    assert {k: v for k, v in named.items() if v} == {}
    protocol = metadata(run)["protocol"]
    assert importlib.import_module(f"anytimectl.protocols.{protocol}").PROTOCOL.__name__


def test_every_import_of_anytimectl_names_a_module() -> None:
    """Imports inside functions too (the lazy ones that keep `--help` fast), in the package and in the tests: a
    module moved without its importers being updated fails here, not at run time on the path that imports it."""
    modules = _modules()
    wrong = []
    for path in [*modules.values(), *(ROOT / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                      if name.startswith("anytimectl") and name not in modules]
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                package = modules[node.module]
                if package.name == "__init__.py":  # `from anytimectl.runtime import shell`: a name or a module
                    wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}"
                              for alias in node.names if not _defines(package, alias.name)
                              and f"{node.module}.{alias.name}" not in modules]
    assert wrong == []


def _defines(init: Path, name: str) -> bool:
    tree = ast.parse(init.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False
