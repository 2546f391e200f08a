"""Workflow files as the checks read them: API-format graphs or the UI's saved format.

`read_workflow` finds the graph (or, in a UI file, the class types) in any of the shapes
a workflow arrives in; `template_graphs` reads every template of a workflows folder.
Used by comfy_bridge/provision/verify.py and `comfy-worker check-workflow`
(comfy_bridge/provision/check_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.provision.known_packs import UI_ONLY_TYPES

log = logs.get(__name__)


class WorkflowShape(BaseModel):
    api: dict[str, dict[str, Any]] | None = None  # API-format graph, when the file is one
    class_types: list[str] = []
    ui_format: bool = False


def read_workflow(data: Any) -> WorkflowShape:
    """Accept an API-format graph, a UI-format workflow, or either wrapped in a request body."""
    if isinstance(data, dict):
        for key in ("input", "payload"):
            if isinstance(data.get(key), dict):
                return read_workflow(data[key])
        for key in ("workflow_json", "workflow", "prompt", "graph"):
            if isinstance(data.get(key), dict):
                return read_workflow(data[key])
        if isinstance(data.get("nodes"), list):
            return _read_ui(data)
        nodes = {k: v for k, v in data.items() if isinstance(v, dict) and "class_type" in v}
        if nodes:
            graph = {str(k): v for k, v in nodes.items()}
            return WorkflowShape(api=graph, class_types=sorted({str(n["class_type"]) for n in graph.values()}))
    raise ValueError("not a ComfyUI workflow: expected an API-format graph ({id: {class_type, inputs}}) "
                     "or a UI-format workflow ({nodes: [...]})")


def _read_ui(data: dict[str, Any]) -> WorkflowShape:
    subgraphs = data.get("definitions", {}).get("subgraphs", []) if isinstance(data.get("definitions"), dict) else []
    sub_ids = {s.get("id") for s in subgraphs if isinstance(s, dict)}
    nodes = list(data["nodes"])
    for s in subgraphs:
        if isinstance(s, dict) and isinstance(s.get("nodes"), list):
            nodes += s["nodes"]
    types = {str(n.get("type")) for n in nodes if isinstance(n, dict) and n.get("type")}
    types -= UI_ONLY_TYPES
    types -= {str(i) for i in sub_ids}
    return WorkflowShape(class_types=sorted(types), ui_format=True)


def load_workflow_file(path: Path) -> WorkflowShape:
    return read_workflow(json.loads(path.read_text(encoding="utf-8")))


def template_graphs(workflows_dir: Path | None) -> dict[str, WorkflowShape]:
    """Every readable workflow under workflows/ (templates), by file name; others are skipped."""
    found: dict[str, WorkflowShape] = {}
    if workflows_dir is None or not workflows_dir.is_dir():
        return found
    for path in sorted(workflows_dir.rglob("*.json")):
        try:
            found[str(path.relative_to(workflows_dir))] = load_workflow_file(path)
        except (OSError, ValueError) as exc:
            log.debug("not a workflow: %s (%s)", path, exc)
    return found
