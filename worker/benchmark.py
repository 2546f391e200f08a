"""The benchmark run before the worker is ready: what it sends, and how it is timed.

The worker measures max_perf itself (`measure`, run by worker/lifecycle.py before the
framework's own benchmark) from ComfyUI's execution timings, and writes it to the
framework's `.has_benchmark` cache, which the framework then reports as is; the framework's
wall-clock benchmark below runs only when that failed. The framework times `runs` rounds of `concurrency` requests and reports the best round's
units per second as max_perf; only HTTP 200 answers count, and a round with none errors
the worker. Two things here keep a failed or skipped generation from passing for a fast
one: every benchmark request gets fresh seeds (ComfyUI would otherwise serve repeats from
its cache, executing nothing, and the bridge's per-request output folder only forces
the save nodes to run again), and outputs come back inline so the round trip includes
encoding, as in a real request.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import random
import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp

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


# ---- max_perf from ComfyUI's own execution timings ------------------------------------

BENCHMARK_FILE = ".has_benchmark"  # the framework's cache of max_perf, in its working directory
MEASURE_FILE = "benchmark_measure.json"


@dataclass
class Measurement:
    """What the benchmark generations measured, in ComfyUI's own execution time."""

    units_per_s: float
    seconds_per_unit: float
    generations: int
    execution_s: list[float]
    warmup_s: float | None
    failures: int

    @property
    def spread(self) -> float:
        """Relative standard error of the mean per-generation time (0 with one sample)."""
        n = len(self.execution_s)
        if n < 2:
            return 0.0
        return statistics.stdev(self.execution_s) / statistics.mean(self.execution_s) / math.sqrt(n)


async def measure(
    session: aiohttp.ClientSession,
    bridge_url: str,
    job: dict[str, Any],
    units_of: Callable[[dict[str, Any]], float],
    *,
    generations: int,
    concurrency: int,
    warmup: bool,
    on_warmup: Callable[[], Any] | None = None,
) -> Measurement | None:
    """Run the benchmark through the bridge; units per second of ComfyUI's execution time.

    ComfyUI's execution_start -> execution_success time (`timings.execution_ms`) leaves out
    the bridge, the network and the 10-second GC pause, so one warm generation measures
    what a wall-clock round of several only approximates; the warm-up (which also loads
    the model) is timed but not counted. None when no measured generation succeeded.
    """
    make = payload_factory(job)

    async def one() -> tuple[float, float] | None:
        payload = make()
        try:
            async with session.post(f"{bridge_url}/generate/sync", json=payload) as r:
                body = await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, ValueError):
            return None
        timings = body.get("timings") if isinstance(body, dict) else None
        ms = timings.get("execution_ms") if isinstance(timings, dict) else None
        if not isinstance(ms, (int, float)) or ms <= 0:
            return None
        return units_of(payload), ms / 1000

    warm = await one() if warmup else None
    if on_warmup is not None:
        on_warmup()
    results: list[tuple[float, float] | None] = []
    for start in range(0, generations, concurrency):
        batch = min(concurrency, generations - start)
        results += await asyncio.gather(*(one() for _ in range(batch)))
    ok = [r for r in results if r is not None]
    if not ok:
        return None
    units, seconds = sum(u for u, _ in ok), sum(s for _, s in ok)
    return Measurement(units_per_s=units / seconds, seconds_per_unit=seconds / units, generations=len(ok),
                       execution_s=[s for _, s in ok], warmup_s=warm[1] if warm else None,
                       failures=len(results) - len(ok))
