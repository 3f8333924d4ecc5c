"""The package's layering: imports flow one way, stages do not lean on each other, nothing
imports the command line, and no package imports run in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import jdiffseg

PACKAGE = Path(jdiffseg.__file__).resolve().parent
# Lower layers never import higher ones.
LAYER = {
    "config": 0, "diffusion": 0, "models": 0, "data": 0,
    "runtime": 1, "scoring": 1,
    "training": 2, "evaluation": 2, "analysis": 2, "prediction": 2, "importing": 2,
    "study": 3,
    "cli": 4,
}
STAGES = ("training", "evaluation", "analysis", "prediction", "importing")


def _imports() -> dict[str, set[str]]:
    """package -> the jdiffseg packages its modules import (anywhere in the module)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        source = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "jdiffseg" and len(bits) > 1 and bits[1] in LAYER:
                    graph.setdefault(source, set()).add(bits[1])
    return graph


def test_every_top_level_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYER)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]


def test_imports_never_run_upward_and_stages_stand_alone():
    for source, targets in _imports().items():
        for target in targets - {source}:
            assert LAYER[target] <= LAYER[source], f"{source} imports {target} (upward)"
            assert not (source in STAGES and target in STAGES), f"stage {source} imports {target}"
            assert target != "cli", f"{source} imports the command line"


def test_no_cycle_between_packages():
    graph = {k: v - {k} for k, v in _imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [p for p in graph if reaches(p, p, {p})]
    assert not cycles, f"packages in an import cycle: {cycles}"
