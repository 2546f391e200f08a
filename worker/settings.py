"""Settings of the Vast side of the worker, from `COMFY_WORKER_*` environment variables.

The prefix keeps clear of the framework's own variables (WORKER_PORT, REPORT_ADDR...).
Every name is listed in the README; CLI flags of `comfy-worker serve` override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.workload import DEFAULT_UNITS, REQUEST_UNITS

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
DEFAULT_BENCHMARK = WORKFLOWS_DIR / "benchmark_weightless.json"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFY_WORKER_", extra="ignore")

    # The benchmark: a workflow like the endpoint's real traffic, so max_perf (units/s)
    # predicts other requests. A JSON file holding an API-format graph, a request
    # `input` object, or a `{"input": {...}}` payload. Default: a weightless graph that
    # runs on any ComfyUI (it measures the pipeline, not the GPU: set your own).
    benchmark_workflow: Path = DEFAULT_BENCHMARK
    # Measured generations = runs x concurrency, after a warm-up that loads the model. They
    # are timed by ComfyUI's own execution timings (worker/benchmark.py), so one warm
    # generation is enough: ready after ComfyUI start + model load + 2 generations.
    benchmark_runs: int = Field(default=1, ge=1, le=50)
    # Requests sent at once (they queue in ComfyUI); also the framework's rounds, when it
    # has to run its own wall-clock benchmark.
    benchmark_concurrency: int = Field(default=1, ge=1, le=32)
    benchmark_warmup: bool = True

    # Requests are refused (429) once queued units / max_perf exceeds this many seconds.
    max_queue_time_s: float = Field(default=30.0, gt=0)
    # True: every request goes into ComfyUI's queue as it arrives. False: one at a time
    # (only for comparison: bench/pipeline.py).
    parallel_requests: bool = True

    request_units: float = Field(default=REQUEST_UNITS, ge=0)
    default_units: float = Field(default=DEFAULT_UNITS, gt=0)
    # $/hour of this worker's GPU: answers then carry cost.usd (worker/cost.py).
    gpu_price_per_hour: float | None = Field(default=None, ge=0)

    # Readiness: node classes and model files ("checkpoints/x.safetensors") that must
    # exist besides those the benchmark workflow uses. Comma-separated or a JSON list.
    required_nodes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    required_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ready_timeout_s: float = Field(default=900.0, gt=0)
    # Without a supervised child (--comfyui-url), ComfyUI silent this long is gone for good.
    comfyui_gone_after_s: float = Field(default=120.0, gt=0)
    health_interval_s: float = Field(default=5.0, gt=0)

    # Working directory of the PyWorker: its benchmark result (.has_benchmark) lives here,
    # one folder per benchmark definition so a changed workflow is measured again.
    state_dir: Path = Path("/tmp/comfy-worker")
    # Public interface the PyWorker binds (WORKER_PORT); 127.0.0.1 in --local mode.
    host: str = "0.0.0.0"
    # Largest request body the public port reads before the signature is checked (413 past
    # it); unset: COMFY_BRIDGE_MAX_BODY_BYTES plus room for auth_data (worker/body_cap.py).
    max_body_bytes: int | None = Field(default=None, ge=1024)

    @field_validator("required_nodes", "required_models", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return v
