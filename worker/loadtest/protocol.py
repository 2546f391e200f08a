"""What a load test records: one RequestRecord per request (results.jsonl) and a RunMeta
(run.json) naming the targets, the load and the prices. Both files are the whole input
of the report (worker/loadtest/report.py), so `--compare` can redraw any earlier run and
a reader can check every figure against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

RESULTS = "results.jsonl"
META = "run.json"


class WorkerTimings(BaseModel):
    """The answering worker's own account of the request, in ms (absent when unknown)."""

    queued_ms: float | None = None
    inputs_ms: float | None = None
    execution_ms: float | None = None
    outputs_ms: float | None = None
    total_ms: float | None = None


class Outcome(BaseModel):
    """What a target reports about one call (targets.py)."""

    status: Literal["success", "failed"]
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    retriable: bool | None = None
    attempts: int = 1
    retried_on: list[str] = Field(default_factory=list, description="why each earlier attempt was retried")
    no_worker_ready: int = Field(default=0, description="router answers with no worker ready (cold start waits)")
    timings: WorkerTimings | None = None
    workload: float | None = None
    worker: str | None = None
    outputs: int = 0
    output_bytes: int = 0
    cost_usd: float | None = Field(default=None, description="the worker's own `cost.usd`, when it sent one")
    worker_price_per_hour: float | None = Field(default=None, description="the price that `cost.usd` used")


class RequestRecord(Outcome):
    """One line of results.jsonl."""

    status: Literal["success", "failed", "cancelled"]  # type: ignore[assignment]
    target: str
    index: int
    request_id: str
    start: float = Field(description="unix time the request was sent, s")
    end: float = Field(description="unix time the answer (or the failure) came, s")
    latency_ms: float

    @property
    def gpu_seconds(self) -> float | None:
        if self.timings is None or self.timings.execution_ms is None:
            return None
        return self.timings.execution_ms / 1000.0


class TargetMeta(BaseModel):
    name: str = Field(description="as given to --target, secrets left out")
    kind: Literal["vast", "bridge", "runpod"]
    gpu_price_per_hour: float | None = None
    price_source: str | None = None


class RunMeta(BaseModel):
    version: int = 1
    label: str = ""
    workflow: str
    requests: int
    mode: Literal["closed", "open"]
    concurrency: int | None = None
    rate_per_s: float | None = None
    seed: int | None = None
    started: float
    ended: float | None = None
    interrupted: bool = False
    local: bool = Field(default=False, description="every target was on loopback: not GPU-platform figures")
    targets: list[TargetMeta]


class Run(BaseModel):
    """A finished (or interrupted) run as read back from its folder."""

    meta: RunMeta
    records: list[RequestRecord]


def append_record(path: Path, record: RequestRecord) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(record.model_dump_json(exclude_none=True) + "\n")


def write_meta(folder: Path, meta: RunMeta) -> None:
    (folder / META).write_text(meta.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")


class RunFolderError(ValueError):
    """A folder that does not hold a load test run."""


def read_run(folder: Path) -> Run:
    try:
        meta = RunMeta.model_validate_json((folder / META).read_text(encoding="utf-8"))
        lines = (folder / RESULTS).read_text(encoding="utf-8").splitlines() if (folder / RESULTS).exists() else []
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{folder} is not a load test run ({META} and {RESULTS} expected): {e}") from e
    records: list[RequestRecord] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(RequestRecord.model_validate(json.loads(line)))
        except ValueError as e:
            raise RunFolderError(f"{folder / RESULTS} line {n}: {e}") from e
    return Run(meta=meta, records=records)
