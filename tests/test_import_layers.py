"""The package's import graph: no circle between modules, and no import from a lower floor to a higher one.

The graph is read from the source (``ast``), not by importing, so it sees every import: module level,
inside functions (lazy imports) and under ``TYPE_CHECKING``. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg`` (as grimp / import-linter count it).

``python tests/test_import_layers.py`` prints the floor plan: each room and the rooms it imports.
"""
import ast
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "timm_xbn"

# Rooms from the ground floor up: a module may import only its own room and rooms listed before it.
# A room is a subpackage of timm_xbn or a top-level module; "__init__" is the package's front door
# (timm_xbn/__init__.py) and "__main__" every ``python -m`` entry (timm_xbn/*/__main__.py), which
# nothing imports.
FLOORS = (
    "utils",        # small shared facts: what a BN is, the model's device, torch.distributed helpers
    "version",
    "layers",       # batch-free norms
    "surgery",      # find blocks, convert BNs to BFNs
    "models",       # registered xbn_* models, checkpoints
    "stats",        # BN moments, estimation shift, perturbation, recalibration
    "evaluation",   # data loaders, shared passes, scores, the results store, shift sets, ESM
    "calibration",  # fit converted BFNs to their BNs (consumes surgery, stats and evaluation's data)
    "corruptions",  # ImageNet-C style corruptions: data sources, batch preparation, metrics
    "adapt",        # test-time adaptation
    "grid",         # the evaluation grid (models x methods x data) and its views
    "training",     # train.py-compatible training
    "study",        # the CPU study (trains with training's checkpoint writer)
    "hub",          # model cards and Hub publishing
    "examples",     # the example data set and checkpoints the README runs on
    "__init__",
    "commands",     # one module per CLI app, with the shared options
    "cli",
    "launch",
    "__main__",
)

# Imports known to run from a lower floor to a higher one, to be emptied, not extended (empty since
# calibration left surgery/ for its own room, issue 25).
KNOWN_VIOLATIONS: Set[Tuple[str, str]] = set()

Graph = Dict[str, Set[str]]


def module_names(package_dir: Path) -> Dict[str, Path]:
    """``{dotted module name: source file}`` of every module under ``package_dir`` (packages by their __init__)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _from_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _known_prefix(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The longest prefix of ``name`` that is a module of the package (None outside it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(package_dir: Path) -> Graph:
    """``{module: modules of the package it imports}``, self-imports left out."""
    modules = module_names(package_dir)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[Optional[str]] = []
            if isinstance(node, ast.Import):
                targets = [_known_prefix(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _from_base(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else _known_prefix(base, modules))
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def room(module: str) -> str:
    """The room of a module: its subpackage of timm_xbn, its own name at the top level, or __init__ / __main__."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "__init__"


def circles(graph: Graph) -> List[List[str]]:
    """The import circles of ``graph``: its groups of two or more modules that reach each other (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return sorted(found)


def floor_violations(graph: Graph, floors: Tuple[str, ...] = FLOORS) -> Set[Tuple[str, str]]:
    """Edges ``(importer, imported)`` whose imported room is not on a lower floor (nor the same room)."""
    level = {name: i for i, name in enumerate(floors)}
    return {
        (src, dst) for src, targets in graph.items() for dst in targets
        if room(src) != room(dst) and level[room(dst)] > level[room(src)]
    }


def room_plan(graph: Graph) -> Dict[str, Set[str]]:
    """``{room: the other rooms it imports}``."""
    plan: Dict[str, Set[str]] = defaultdict(set)
    for src, targets in graph.items():
        plan[room(src)].update(room(dst) for dst in targets if room(dst) != room(src))
    return plan


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(PACKAGE_DIR)


def test_every_room_has_a_floor(graph):
    unplaced = sorted({room(m) for m in graph} - set(FLOORS))
    assert not unplaced, f"rooms missing from FLOORS (place them): {unplaced}"


def test_no_import_circle(graph):
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join("  " + ", ".join(group) for group in found)


def test_no_import_runs_up_a_floor(graph):
    new = sorted(floor_violations(graph) - KNOWN_VIOLATIONS)
    assert not new, "imports from a lower floor to a higher one:\n" + "\n".join(f"  {a} -> {b}" for a, b in new)


def test_known_violations_still_exist(graph):
    """A fixed violation must leave the allow-list, so the list only shrinks."""
    gone = sorted(KNOWN_VIOLATIONS - floor_violations(graph))
    assert not gone, f"fixed: remove from KNOWN_VIOLATIONS: {gone}"


def test_walk_finds_lazy_relative_circle_and_upward_import(tmp_path):
    """The walk on a planted package: a circle closed by a function-level relative import, and a climb."""
    pkg = tmp_path / "timm_xbn"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from .a import f\n")
    (pkg / "low" / "a.py").write_text("from timm_xbn.low.b import g\n\ndef f():\n    return g\n")
    (pkg / "low" / "b.py").write_text("def g():\n    from . import a\n    from ..high import h\n    return a, h\n")
    (pkg / "high" / "__init__.py").write_text("import timm_xbn.low.a\n\nh = 1\n")
    planted = import_graph(pkg)
    assert planted["timm_xbn.low.b"] == {"timm_xbn.low.a", "timm_xbn.high"}
    assert planted["timm_xbn.high"] == {"timm_xbn.low.a"}
    assert floor_violations(planted, ("low", "high", "__init__")) == {("timm_xbn.low.b", "timm_xbn.high")}
    assert circles(planted) == [["timm_xbn.high", "timm_xbn.low.a", "timm_xbn.low.b"]]
    planted["timm_xbn.low.b"].discard("timm_xbn.high")  # the lazy `from . import a` alone still closes one
    assert circles(planted) == [["timm_xbn.low.a", "timm_xbn.low.b"]]
    planted["timm_xbn.low.b"].discard("timm_xbn.low.a")
    assert circles(planted) == []


def print_floor_plan(package_dir: Path = PACKAGE_DIR) -> None:
    """Each room, bottom floor first, with the rooms it imports and any circle or upward import."""
    graph = import_graph(package_dir)
    plan = room_plan(graph)
    level = {name: i for i, name in enumerate(FLOORS)}
    for name in sorted(plan, key=lambda r: level.get(r, len(FLOORS))):
        print(f"{level.get(name, '?')!s:>2} {name:<12} -> {', '.join(sorted(plan[name], key=level.get)) or '-'}")
    for group in circles(graph):
        print(f"circle of {len(group)}: {', '.join(group)}")
    for src, dst in sorted(floor_violations(graph)):
        print(f"upward: {src} -> {dst}{'  (known)' if (src, dst) in KNOWN_VIOLATIONS else ''}")


if __name__ == "__main__":
    print_floor_plan(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)


def test_one_convert_whatever_the_import_order():
    """``timm_xbn.convert`` is the surgery; calibration is its own step, never patched into surgery, so a
    fresh interpreter that imports the surgery module first gets the same function."""
    import importlib
    import inspect
    import subprocess

    import timm_xbn
    import timm_xbn.calibration as calibration
    import timm_xbn.surgery as surgery

    assert timm_xbn.convert is surgery.convert and "calibrate" not in inspect.signature(surgery.convert).parameters
    assert not hasattr(surgery, "calibrate") and not hasattr(calibration, "convert")
    assert timm_xbn.calibrate is calibration.calibrate
    for gone in ("timm_xbn.surgery.calibrate", "timm_xbn.calibration.convert"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(gone)
    code = ("import importlib; first = importlib.import_module('timm_xbn.surgery.convert').convert; "
            "import timm_xbn, timm_xbn.surgery; print(first is timm_xbn.convert is timm_xbn.surgery.convert)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(PACKAGE_DIR.parent))).stdout.strip()
    assert out == "True"
