"""The import rule of comfy_bridge/: each package imports only the layers below it.

Every import counts, module-level or inside a function (a lazy import is still a
dependency), read from the source with `ast`; only `if TYPE_CHECKING:` blocks are left
out, since they never run. The order, lowest first (units on one line
are peers and must not import each other):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAYERS: list[set[str]] = [
    {"errors", "logs"},  # what everything reports with
    {"settings", "observability", "schemas", "retry"},  # configuration, metrics, request/response models, the retry policy
    {"net"},  # address guard and pinned resolution for caller-chosen URLs
    {"s3", "comfyui"},  # S3 targets/clients; ComfyUI's process, client, events and errors
    {"provision", "templates"},  # installing ComfyUI and models; the template store
    {"inputs", "delivery", "webhooks"},  # what goes into a run and where its results go
    {"jobs"},  # the routes and the job runner
    {"shutdown"},  # graceful stop of the whole app
    {"app"},  # wiring it all into one aiohttp application
    {"cli"},  # `comfy-bridge`
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

__doc__ += "\n".join(f"    {i}: {', '.join(sorted(layer))}" for i, layer in enumerate(LAYERS)) + "\n"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved).

    `from package import module` counts as importing that module only, when it is one
    of `modules`, so a package's own `__init__` re-exports make no false cycle."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".") if path.is_relative_to(ROOT) else [path.stem]
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):  # drop `if TYPE_CHECKING:` blocks: annotations only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            named = {f"{module}.{alias.name}" for alias in node.names}
            found.update(named)
            if not named <= modules:
                found.add(module)
    return found


def _sources(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "gc_freeze_pack" not in p.parts)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "comfy_bridge" and len(parts) > 1 else None


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in _sources("comfy_bridge")} - {None}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS in this test"


def test_no_package_imports_one_above_it_or_a_peer() -> None:
    wrong: list[str] = []
    for path in _sources("comfy_bridge"):
        unit = _unit(_module_name(path))
        for name in _imports(path):
            other = _unit(name)
            if other is None or other == unit or other not in RANK:
                continue
            if RANK[other] >= RANK[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name} (layer {RANK[other]} >= {RANK[unit]})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_comfy_bridge_never_imports_worker() -> None:
    wrong = [f"{p.relative_to(ROOT)} imports {n}" for p in _sources("comfy_bridge")
             for n in _imports(p) if n == "worker" or n.startswith("worker.")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("top", ["comfy_bridge", "worker"])
def test_no_two_modules_import_each_other(top: str) -> None:
    """No import cycle between modules either, lazy imports included."""
    modules = {_module_name(p): p for p in _sources(top)}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for imported in _imports(path, set(modules)):
            if imported in modules and imported != name:
                graph[name].add(imported)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(modules):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_rule_catches_a_lazy_import_upwards(tmp_path: Path) -> None:
    """The checker itself: an import inside a function is found."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from comfy_bridge.jobs import serving\n")
    assert "comfy_bridge.jobs.serving" in _imports(source)
