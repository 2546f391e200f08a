"""The runtime dependencies in pyproject.toml are what comfy_bridge/ and worker/ import, each with a reason.

A dependency nobody imports is installed on every worker for nothing; an import that no
declared dependency provides works only by accident of what else is installed. Modules that
come with a declared dependency (botocore with boto3, yarl with aiohttp) count as provided.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
OWN = {"comfy_bridge", "worker"}
# Folders whose commands run off the worker (a laptop, a backend) and so take their
# imports from an extra, kept out of the image: folder -> extra.
EXTRA_FOLDERS = {"worker/loadtest": "loadtest"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    match = _NAME.match(req.strip())
    assert match, req
    return norm(match.group(0))


def runtime_deps() -> set[str]:
    return {req_name(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]}


def extra_deps(extra: str) -> set[str]:
    return {req_name(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"][extra]}


def _folder_extra(path: Path) -> str | None:
    rel = path.relative_to(ROOT).as_posix()
    return next((e for folder, e in EXTRA_FOLDERS.items() if rel.startswith(folder + "/")), None)


def imported_modules(extra: str | None = None) -> dict[str, str]:
    """Top-level third-party module -> a file importing it (function-level imports included),
    in the worker itself (extra None) or in the folders served by `extra`."""
    found: dict[str, str] = {}
    for pkg in OWN:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if _folder_extra(path) != extra:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {norm(d) for d in _module_distributions().get(module, [])}


def requirements_of(dist: str) -> set[str]:
    reqs = md.requires(dist) or []
    return {req_name(r) for r in reqs if "extra ==" not in r}


def test_every_runtime_dependency_is_imported_by_the_worker():
    imported = {d for m in imported_modules() for d in distributions_of(m)}
    unused = runtime_deps() - imported
    assert not unused, f"runtime dependencies nothing in comfy_bridge/ or worker/ imports: {sorted(unused)}"


def _provided(deps: set[str]) -> set[str]:
    return deps | {r for d in deps for r in requirements_of(d)}


def test_every_import_is_provided_by_a_declared_dependency():
    provided = _provided(runtime_deps())
    missing = {m: f for m, f in imported_modules().items() if not distributions_of(m) & provided}
    assert not missing, f"imported but not provided by a runtime dependency: {missing}"


def test_commands_off_the_worker_import_only_the_runtime_set_and_their_extra():
    for extra in sorted(set(EXTRA_FOLDERS.values())):
        provided = _provided(runtime_deps() | extra_deps(extra))
        missing = {m: f for m, f in imported_modules(extra).items() if not distributions_of(m) & provided}
        assert not missing, f"imported but not provided by the runtime set or the {extra!r} extra: {missing}"


def test_every_dependency_line_has_a_reason_comment():
    """Each entry sits under a comment (consecutive entries may share one) or carries one inline."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"]) + [r for group in project["optional-dependencies"].values() for r in group]
    lines = [line.strip() for line in PYPROJECT.read_text().splitlines()]
    uncommented = []
    for req in reqs:
        i = next(n for n, line in enumerate(lines) if f'"{req}"' in line)
        j = i - 1
        while j >= 0 and lines[j].startswith('"'):
            j -= 1  # entries of the same group, under one comment
        if "#" not in lines[i] and not lines[j].startswith("#"):
            uncommented.append(req)
    assert not uncommented, f"dependencies without a one-line reason in pyproject.toml: {uncommented}"
