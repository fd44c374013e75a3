"""The package's imports point down the flow: no module imports a later stage, and no import cycle exists.

Every ``import`` statement counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import still
ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ldm

ROOT = Path(ldm.__file__).parent

# Stages in the order data flows through them; a module may import its own stage or an earlier one.
LAYERS: list[tuple[str, ...]] = [
    (
        "ldm",
        "ldm.errors",
        "ldm.utils",
        "ldm.choices",
        "ldm.config",
        "ldm.device",
        "ldm.progress",
        "ldm.figures",
        "ldm.run_folder",
        "ldm.watermark",
    ),
    ("ldm.models",),
    ("ldm.data",),
    ("ldm.diffusion", "ldm.text2image", "ldm.model_card"),  # text2image: pretrained pipelines, beside our own
    ("ldm.evaluation",),
    ("ldm.training",),
    ("ldm.app",),
    ("ldm.commands", "ldm.cli", "ldm.__main__", "ldm.pipeline"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``ldm`` modules that ``path`` imports (``from ldm.x import y`` counts ``ldm.x.y`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found


def layer_of(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or (p != "ldm" and name.startswith(p + ".")) for p in prefixes):
            return i
    raise AssertionError(f"module {name} belongs to no layer: add it to LAYERS in {__file__}")


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph = {name: imported_modules(path, modules) for name, path in modules.items()}
    for name, deps in graph.items():  # a package's __init__ is not an edge worth following
        deps.discard(name)
        deps -= {d for d in deps if d in modules and modules[d].name == "__init__.py" and name.startswith(d + ".")}
    return graph


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_imports_point_down_the_flow():
    wrong = [
        f"{name} (stage {layer_of(name)}) imports {dep} (stage {layer_of(dep)})"
        for name, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(name)
    ]
    assert not wrong, "imports that point up the flow:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
