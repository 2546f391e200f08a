"""What the worker measures about itself, wired for `comfy-worker serve` in one place.

Why: three measurements feed the autoscaler's figures and share the state folder: the
cold-start timeline (worker/cold_start.py, into /metrics and the `ready` line), max_perf
from ComfyUI's execution timings (worker/benchmark.py `measure`), and the load units that
learn from completed requests (worker/model_family.py, worker/shape_correction.py,
which needs the benchmark's seconds per unit). worker/serve_cli.py builds one
`SelfMeasure` and hands its parts to the workload model, the bridge and the lifecycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import aiohttp

from comfy_bridge import logs
from comfy_bridge import observability as obs
from worker import benchmark
from worker.cold_start import Timeline
from worker.model_family import ModelFamilies
from worker.settings import WorkerSettings
from worker.shape_correction import FILE_NAME, ShapeCorrections
from worker.workload import WorkloadModel

log = logs.get(__name__)


class SelfMeasure:
    def __init__(self, settings: WorkerSettings, state: Path, comfyui_path: Path | None) -> None:
        self.settings = settings
        self.timeline = Timeline(on_mark=obs.METRICS.startup_phase)
        dirs = [comfyui_path / "models"] if comfyui_path else []
        if os.environ.get("COMFY_WORKER_MODELS_DIR"):
            dirs.append(Path(os.environ["COMFY_WORKER_MODELS_DIR"]))
        self.families = ModelFamilies(dirs)
        self.corrections = ShapeCorrections(state / FILE_NAME)

    def workload(self, base: WorkloadModel) -> WorkloadModel:
        """`base` with model families and the learned correction."""
        return dataclasses.replace(base, families=self.families, corrections=self.corrections)

    async def warm(self) -> None:
        """Read the model files' headers now, off the event loop, not on a first request."""
        n = await asyncio.to_thread(self.families.warm)
        log.info("model families read", extra={"fields": {"model_files": n}})

    def benchmark_run(self, bridge_url: str, job: dict[str, Any], workload: WorkloadModel) -> Callable[..., Any]:
        s = self.settings

        async def run(session: aiohttp.ClientSession, on_warmup: Callable[[], Any] | None = None) -> Any:
            return await benchmark.measure(
                session, bridge_url, job, workload.payload_units, generations=s.benchmark_runs * s.benchmark_concurrency,
                concurrency=s.benchmark_concurrency, warmup=s.benchmark_warmup, on_warmup=on_warmup)

        return run

    def on_measured(self, m: benchmark.Measurement) -> None:
        self.corrections.seconds_per_unit = m.seconds_per_unit
