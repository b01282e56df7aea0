"""The package's import graph: no cycles, and no import from a lower layer up to a higher one.

Every import counts — module level, inside functions, and under ``TYPE_CHECKING`` — because a
lazy import is still a dependency. The layers, lowest first, are the architecture's
(docs/architecture.md); each package's ``cli`` module belongs to the CLI layer on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agent_worker"

LAYERS: list[set[str]] = [
    {"errors"},
    {"logs", "retry", "limits", "eventloop", "gcpause", "conncap", "hostcheck"},
    {"telemetry"},
    {"config", "prompts", "tokens"},
    {"protocol"},
    {"transport", "server"},
    {"providers"},
    {"tools"},
    {"hookspecs", "plugins", "plugins_builtin"},
    {"runtime", "client", "web"},
    {"agent"},
    {"engine"},
    {"worker"},
    {"cli", "testing", ""},
    {"pytest_plugin"},
]
GROUPS = {"hookspecs": "plugins", "plugins_builtin": "plugins"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` depends on the module; ``from pkg import name`` on ``pkg``.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("agent_worker"):
                target = _resolve(name)
                if target is not None and target not in (module, "agent_worker"):
                    out.add(target)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "cli":
        return "cli"
    top = parts[1] if len(parts) > 1 else ""
    return GROUPS.get(top, top)


def _layer(module: str) -> int:
    top = module.rsplit(".", maxsplit=1)[-1] if module.endswith(".cli") else ([*module.split("."), ""])[1]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    msg = f"{module} belongs to no layer; add its package to LAYERS"
    raise AssertionError(msg)


def test_every_module_has_a_layer() -> None:
    """A new top-level package must be placed in the layer order deliberately."""
    for module in MODULES:
        _layer(module)


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_no_upward_or_sideways_imports() -> None:
    """Each import goes to a lower layer, or stays inside its own package."""
    bad = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(module)
        or (_layer(target) == _layer(module) and _top(target) != _top(module))
    ]
    assert bad == []
