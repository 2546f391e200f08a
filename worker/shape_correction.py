"""A learned correction of load units per graph shape, from measured execution times.

Why: the formula in worker/workload.py prices steps, pixels, samplers and model
families, but not everything a graph does (a ControlNet, an upscaler, a second pass, a
custom node): a shape the formula misprices is mispriced on every request, and the
autoscaler queues and scales on wrong figures. Each completed request tells what it
really cost: `execution_s / seconds_per_unit` units, `seconds_per_unit` being what the
benchmark measured (ComfyUI's own execution time per unit). Per shape (the graph with
prompts, seeds and output names left out) the correction is an exponential average of
measured / predicted, each sample and the result bounded to [1/4, 4]; a shape's first
request is not learned from (it may include loading the model). Corrections persist in
the state directory as JSON (at most `max_shapes`, least recently seen dropped first),
and each move of 10% or more is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from comfy_bridge import logs

log = logs.get(__name__)

FILE_NAME = "workload_corrections.json"
_TEXT_KEYS = {"sampler_name", "scheduler", "upscale_method", "crop", "weight_dtype", "type"}


def shape_key(graph: dict[str, Any]) -> str:
    """A graph's shape: node classes, links, numbers (not seeds) and model/sampler names."""

    def keep(name: str, value: Any) -> bool:
        if isinstance(value, bool) or (isinstance(value, (int, float)) and "seed" not in name):
            return True
        if isinstance(value, str):
            return name in _TEXT_KEYS or name.endswith("_name")
        return isinstance(value, list)  # a link [node, slot]

    shape = []
    for node_id in sorted(graph, key=str):
        node = graph[node_id]
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        shape.append([str(node_id), str(node.get("class_type")),
                      sorted([k, v] for k, v in inputs.items() if keep(k, v))])
    raw = json.dumps(shape, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class ShapeCorrections:
    """factor(graph) for the workload model; observe() after each completed request."""

    def __init__(self, path: Path | None = None, *, alpha: float = 0.3, low: float = 0.25, high: float = 4.0,
                 max_shapes: int = 512, log_move: float = 0.1) -> None:
        self.path = path
        self.alpha, self.low, self.high = alpha, low, high
        self.max_shapes, self.log_move = max_shapes, log_move
        self.seconds_per_unit: float | None = None  # set once the benchmark has measured it
        self.shapes: dict[str, dict[str, float]] = {}
        if path is not None and path.exists():
            self._load(path)

    def factor(self, graph: dict[str, Any]) -> float:
        entry = self.shapes.get(shape_key(graph))
        return entry["factor"] if entry else 1.0

    def observe(self, graph: dict[str, Any], base_units: float, execution_s: float) -> float | None:
        """Learn from one request; the shape's new factor (None when nothing was learned)."""
        spu = self.seconds_per_unit
        if not spu or base_units <= 0 or not math.isfinite(execution_s) or execution_s <= 0:
            return None
        key = shape_key(graph)
        entry = self.shapes.setdefault(key, {"factor": 1.0, "n": 0, "logged": 1.0, "seen": 0.0})
        entry["seen"] = time.time()
        entry["n"] += 1
        if entry["n"] == 1:  # may include the model load: not what the shape costs
            return None
        ratio = min(self.high, max(self.low, execution_s / spu / base_units))
        old = entry["factor"]
        entry["factor"] = min(self.high, max(self.low, old + self.alpha * (ratio - old)))
        if abs(entry["factor"] / entry["logged"] - 1) >= self.log_move:
            log.info("workload correction moved", extra={"fields": {
                "shape": key, "from": round(entry["logged"], 3), "to": round(entry["factor"], 3),
                "requests": int(entry["n"]), "measured_ratio": round(ratio, 3)}})
            entry["logged"] = entry["factor"]
            self._persist()
        return entry["factor"]

    # ---- the state file -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        newest = sorted(self.shapes.items(), key=lambda kv: kv[1]["seen"], reverse=True)[: self.max_shapes]
        self.shapes = dict(newest)
        return {"version": 1, "shapes": self.shapes}

    def save(self) -> None:
        if self.path is not None:
            self._write(self._text())

    def _text(self) -> str:
        return json.dumps(self.snapshot(), indent=1, sort_keys=True)

    def _write(self, text: str) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def _persist(self) -> None:
        """Write off the event loop when there is one (observe runs in request handling)."""
        if self.path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        loop.run_in_executor(None, self._write, self._text())

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            shapes = data["shapes"]
            for key, e in shapes.items():
                f = float(e["factor"])
                if math.isfinite(f):
                    self.shapes[str(key)] = {"factor": min(self.high, max(self.low, f)), "n": float(e.get("n", 0)),
                                             "logged": float(e.get("logged", f)), "seen": float(e.get("seen", 0))}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring an unreadable %s (%s): starting without corrections", path, type(exc).__name__)
