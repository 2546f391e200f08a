"""The benchmark the framework runs before the worker is ready: what it sends.

The framework times `runs` rounds of `concurrency` requests and reports the best round's
units per second as max_perf; only HTTP 200 answers count, and a round with none errors
the worker. Two things here keep a failed or skipped generation from passing for a fast
one: every benchmark request gets fresh seeds (ComfyUI would otherwise serve repeats from
its cache, executing nothing, and the bridge's per-request output folder only forces
the save nodes to run again), and outputs come back inline so the round trip includes
encoding, as in a real request.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any, Callable

from comfy_bridge.errors import BadRequest

_SEED_INPUTS = ("seed", "noise_seed")


def load_input(path: Path) -> dict[str, Any]:
    """The request `input` object of a benchmark file (graph, input, or payload)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BadRequest(f"cannot read the benchmark workflow {path}: {e}") from e
    if not isinstance(data, dict) or not data:
        raise BadRequest(f"benchmark workflow {path} must be a JSON object")
    if isinstance(data.get("input"), dict):
        data = data["input"]
    if any(k in data for k in ("workflow_json", "workflow", "modifier")):
        job = dict(data)
    else:
        job = {"workflow_json": data}
    job.pop("request_id", None)
    job.pop("webhook", None)
    job.pop("s3", None)
    job["return_outputs_as_base64"] = True
    return job


def graph_of(job: dict[str, Any]) -> dict[str, Any] | None:
    graph = job.get("workflow_json", job.get("workflow"))
    return graph if isinstance(graph, dict) else None


def fresh(job: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
    """A copy of `job` with new seeds and its own request_id."""
    rng = rng or random.Random()
    out = copy.deepcopy(job)
    graph = graph_of(out)
    if graph is not None:
        for node in graph.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for name in _SEED_INPUTS:
                if isinstance(inputs.get(name), int) and not isinstance(inputs.get(name), bool):
                    inputs[name] = rng.randrange(1, 2**31)
    mods = out.get("modifications")
    if isinstance(mods, dict):
        for name in _SEED_INPUTS:
            if isinstance(mods.get(name), int):
                mods[name] = rng.randrange(1, 2**31)
    out["request_id"] = f"benchmark-{uuid.uuid4().hex[:12]}"
    return out


def payload_factory(job: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """BenchmarkConfig.generator: a new `{"input": ...}` payload per call."""
    rng = random.Random()
    return lambda: {"input": fresh(job, rng)}


def fingerprint(job: dict[str, Any], *parts: Any) -> str:
    """Names the benchmark definition, so a changed one is measured again."""
    text = json.dumps([job, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
