"""TemplateStore: named workflows a caller fills with typed, validated parameters.

A backend sends `{"modifier": "sdxl_t2i", "modifications": {"prompt": ..., "seed": 7}}`
instead of a 50 KB graph, and a typo gets a 422 naming what is allowed instead of a
ComfyUI error deep in a node. Templates are read from `workflows/` (see protocol.py for
the file format) and re-read when a file there changes, that template alone (the others
are kept as read), so adding one needs no restart.
Parameter names also match case-insensitively, so payloads written for Vast's template
(`PROMPT`, `WIDTH`, ...) keep working.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from comfy_bridge import logs
from comfy_bridge.errors import BadRequest, UnknownTemplate
from comfy_bridge.settings import BridgeSettings
from comfy_bridge.templates import schema_check
from comfy_bridge.templates.protocol import TEMPLATE_NAME_PATTERN, ParamSpec, TemplateSpec

log = logs.get(__name__)

_NAME_RE = re.compile(TEMPLATE_NAME_PATTERN)
PARAMS_SUFFIX = ".params.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def lenient(spec: ParamSpec, value: Any) -> Any:
    """The value in the JSON type its schema wants where it is written another common way
    ("30" for 30, "true" for true, 768.0 for 768); anything else is left for the schema
    check to name. A non-finite float becomes its text, so `type` rejects it (JSON Schema
    would let NaN through every bound)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if spec.type == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if spec.type in ("integer", "number") and isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return lenient(spec, parse(text))
            except ValueError:
                pass
        return value
    if spec.type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.type == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def param_schema(spec: ParamSpec) -> dict[str, Any]:
    """JSON Schema of one parameter."""
    whole = spec.type == "integer"

    def num(x: float) -> int | float:
        return int(x) if whole or float(x).is_integer() else x

    prop: dict[str, Any] = {"type": spec.type}
    description = spec.description
    if spec.randomize:
        description = (description + " " if description else "") + "(random when omitted)"
    if description:
        prop["description"] = description
    if spec.default is not None:
        prop["default"] = spec.default
    if spec.minimum is not None:
        prop["minimum"] = num(spec.minimum)
    if spec.maximum is not None:
        prop["maximum"] = num(spec.maximum)
    if spec.multiple_of is not None:
        prop["multipleOf"] = num(spec.multiple_of)
    if spec.enum is not None:
        prop["enum"] = spec.enum
    if spec.min_length is not None:
        prop["minLength"] = spec.min_length
    if spec.max_length is not None:
        prop["maxLength"] = spec.max_length
    if spec.pattern is not None:  # the whole string must match (JSON Schema searches)
        prop["pattern"] = f"^(?:{spec.pattern})$"
    return prop


@dataclass
class Template:
    name: str
    graph: dict[str, Any]
    spec: TemplateSpec

    def schema(self) -> dict[str, Any]:
        params = self.spec.parameters
        return {
            "$schema": SCHEMA_DIALECT,
            "title": self.name,
            "description": self.spec.description,
            "type": "object",
            "properties": {name: param_schema(p) for name, p in params.items()},
            "required": [name for name, p in params.items() if p.required],
            "additionalProperties": False,
        }

    def expand(self, modifications: dict[str, Any]) -> dict[str, Any]:
        params = self.spec.parameters
        lowered = {name.lower(): name for name in params}
        errors: list[dict[str, str]] = []
        given: dict[str, Any] = {}
        for key, value in (modifications or {}).items():
            name = key if key in params else lowered.get(str(key).lower(), str(key))
            if name in given:
                errors.append({"param": str(key), "message": f"given twice (as {name!r} too)"})
            elif value is not None:
                given[name] = value
        values = {name: lenient(params[name], v) if name in params else v for name, v in given.items()}
        errors += [p._asdict() for p in schema_check.problems(self.schema(), values)]
        if errors:
            listed = "; ".join(f"{e['param']}: {e['message']}" for e in errors)
            raise BadRequest(
                f"invalid modifications for template {self.name!r}: {listed} "
                f"(allowed: {', '.join(params) or 'none'})",
                template=self.name,
                errors=errors,
                allowed=self.schema()["properties"],
            )
        for name, spec in params.items():
            if name in values:
                values[name] = int(values[name]) if spec.type == "integer" else values[name]
            elif spec.randomize:
                assert spec.minimum is not None and spec.maximum is not None
                values[name] = random.randint(int(spec.minimum), int(spec.maximum))
            elif spec.default is not None:
                values[name] = spec.default
        graph = copy.deepcopy(self.graph)
        for name, value in values.items():
            for node, input_name in params[name].split_targets():
                graph[node]["inputs"][input_name] = value
        return graph


def load_template(graph_path: Path) -> Template:
    """Read and cross-check a template; ValueError saying what is wrong with the files."""
    name = graph_path.name[: -len(".json")]
    if not _NAME_RE.match(name):
        raise ValueError(f"template name {name!r} must match {TEMPLATE_NAME_PATTERN}")
    graph = json.loads(graph_path.read_text())
    if not isinstance(graph, dict) or not graph:
        raise ValueError(f"{graph_path.name} must be an API-format graph object")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise ValueError(f"{graph_path.name}: node {node_id} needs class_type and inputs (API format)")
    spec_path = graph_path.with_name(name + PARAMS_SUFFIX)
    spec = (
        TemplateSpec.model_validate_json(spec_path.read_text())
        if spec_path.exists()
        else TemplateSpec()
    )
    for pname, p in spec.parameters.items():
        for node, input_name in p.split_targets():
            if node not in graph or input_name not in graph[node]["inputs"]:
                raise ValueError(f"{spec_path.name}: {pname} targets {node}.{input_name}, not in the graph")
        if p.default is not None:
            for problem in schema_check.problems(param_schema(p), lenient(p, p.default)):
                raise ValueError(f"{spec_path.name}: default of {pname} {problem.message}")
    return Template(name=name, graph=graph, spec=spec)


class TemplateStore:
    """All templates of a folder, re-read when its files change."""

    def __init__(self, source: BridgeSettings | Path | str) -> None:
        self.root = Path(source.workflows_dir if isinstance(source, BridgeSettings) else source)
        self._templates: dict[str, Template] = {}
        self.errors: dict[str, str] = {}
        self._signature: tuple[Any, ...] | None = None
        # name -> ((mtime, size) of its graph, of its params file), the Template read from them
        self._files: dict[str, tuple[tuple[Any, ...], Template | None]] = {}
        self._lock = threading.Lock()
        self._refresh()

    def _scan(self) -> tuple[Any, ...]:
        try:
            entries = [e for e in os.scandir(self.root) if e.name.endswith(".json") and e.is_file()]
        except FileNotFoundError:
            return ()
        return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries))

    def _refresh(self) -> None:
        """Re-read the templates whose files changed (graph or params), only those."""
        signature = self._scan()
        if signature == self._signature:
            return
        with self._lock:
            stats = {file_name: (mtime, size) for file_name, mtime, size in signature}
            templates: dict[str, Template] = {}
            errors: dict[str, str] = {}
            seen: dict[str, tuple[Any, ...]] = {}
            for file_name in stats:
                if file_name.endswith(PARAMS_SUFFIX):
                    continue
                name = file_name[: -len(".json")]
                seen[name] = (stats[file_name], stats.get(name + PARAMS_SUFFIX))
                cached = self._files.get(name)
                if cached is not None and cached[0] == seen[name]:
                    if cached[1] is not None:
                        templates[name] = cached[1]
                    else:
                        errors[name] = self.errors.get(name, "not loaded")
                    continue
                try:
                    templates[name] = load_template(self.root / file_name)
                except (OSError, ValueError, ValidationError) as exc:
                    errors[name] = str(exc)
                    log.error("template %s not loaded: %s", name, exc)
            self._files = {n: (sig, templates.get(n)) for n, sig in seen.items()}
            self._templates, self.errors, self._signature = templates, errors, signature

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._templates)

    def get(self, name: str) -> Template:
        self._refresh()
        template = self._templates.get(name)
        if template is None:
            available = sorted(self._templates)
            raise UnknownTemplate(
                f"no workflow template named {name!r}; available: {', '.join(available) or 'none'}",
                template=name,
                available=available,
            )
        return template

    def expand(self, name: str, modifications: dict[str, Any]) -> dict[str, Any]:
        """The template's graph with the modifications applied; 422 listing what is allowed."""
        return self.get(name).expand(modifications)

    def schema(self, name: str) -> dict[str, Any]:
        return self.get(name).schema()

    def list(self) -> list[dict[str, Any]]:
        """Every template with the JSON Schema of its parameters."""
        self._refresh()
        return [
            {"name": t.name, "description": t.spec.description, "schema": t.schema()}
            for t in (self._templates[n] for n in sorted(self._templates))
        ]
