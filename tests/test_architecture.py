"""The package's import graph, read from the source: no import cycle, and no import that
points up the layer order of docs/architecture.md (TYPE_CHECKING imports and imports inside
functions count too: a cycle hidden in a function is still a cycle to a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "afs_callbacks"

#: Layers from the top of docs/architecture.md down; a module may import only its own
#: layer or lower ones. Keys are the first name under afs_callbacks.
LAYERS = {
    "__init__": 12,
    "__main__": 12,
    "testing": 12,
    "cli": 11,
    "exporter": 10,
    "dashboard": 9,
    "_watcher_main": 9,  # the death watcher process: it delivers through a manager
    "integrations": 8,
    "watch": 8,
    "sweeps": 8,  # a sweep's start and summary: reads trials' events through a manager
    "control": 7,
    "rules": 7,  # conditions on a run that act through control's asks
    "tracking": 6,
    "monitors": 5,
    "manager": 4,
    "delivery": 3,
    "prometheus": 3,  # the textfile writer hangs off delivery's run hooks
    "channels": 2,
    "messages": 1,
    "formatting": 1,
}
BASE = 0  # events, outcome, runstate, config, redaction, urls, exceptions, _log, ...


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            # The root package's lazy re-exports are the public face, not a dependency.
            if target in known and target not in (name, "afs_callbacks"):
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__", BASE)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in edges:
        if node not in index:
            visit(node)
    return groups


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_no_import_points_up_the_layers():
    back = sorted(
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    )
    assert back == []


def test_the_checker_sees_a_cycle_and_a_back_arrow():
    edges = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(edges) == [["a", "b"]]
    assert (
        layer("afs_callbacks.cli.x") > layer("afs_callbacks.delivery.outbox") > layer("afs_callbacks.events")
    )
