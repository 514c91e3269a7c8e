"""The imports obey the layering: ``core`` at the bottom; ``datasets`` and the methods (``baselines``, ``aug``) on
it, each unaware of the other; the engine (``benchmarks``) on top. Every import counts, lazy ones inside functions
included, and the project's modules import each other without cycles at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "datasets", "baselines", "aug", "benchmarks")
# What each package may import from the project, besides itself.
ALLOWED = {
    "core": set(),
    "datasets": {"core"},
    "baselines": {"core"},
    "aug": {"core", "baselines"},
    "benchmarks": {"core", "datasets", "baselines", "aug"},
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, module: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a project module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:-node.level + (1 if path.name == "__init__.py" else 0) or None]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def test_layers_import_only_what_lies_below():
    wrong = []
    for module, path in modules().items():
        package = module.split(".")[0]
        for line, name in imports(path, module):
            target = name.split(".")[0]
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({package}) imports {name}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(set(wrong)))


def test_no_import_cycles_between_modules():
    known = modules()
    graph = {m: {n for _, n in imports(p, m, top_level_only=True) if n in known and n != m} for m, p in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from benchmarks.runner import train_run\n")
    assert (2, "benchmarks.runner") in imports(bad, "baselines.bad")
