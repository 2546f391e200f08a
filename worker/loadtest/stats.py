"""The report's figures, each computed from results.jsonl records alone so a reader can
check it (the report states each method):

- latency percentiles: over successful requests, ms, numpy's default ("linear")
  interpolation, i.e. `numpy.percentile(latencies, q)`;
- throughput: successful requests / (last answer - first send), per second;
- GPU-seconds: the sum of the workers' `timings.execution_ms` over successful requests;
- fleet seconds: per worker seen, its last answer minus its first request's send, summed
  (what the run held, idle gaps included, as a lower bound on billed time);
- $ per 1,000 images = price_per_hour / 3600 x seconds / successful images x 1000, for
  both GPU-seconds and fleet seconds;
- cold starts: requests that waited for "no worker ready", and each worker's first
  answer (its latency beside the median of the rest).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
from pydantic import BaseModel

from worker.loadtest.protocol import RequestRecord, TargetMeta

# The evaluation's estimates, $ per 1,000 SDXL images (printed beside measured figures).
ESTIMATES: list[tuple[str, str, float, float]] = [
    ("vast", "Vast RTX 4090", 0.50, 1.00),
    ("runpod", "RunPod", 0.60, 1.60),
    ("modal", "Modal A10", 2.00, 4.00),
]
PERCENTILES = (50, 95, 99)


def percentile(values: Iterable[float], q: float) -> float | None:
    data = list(values)
    return float(np.percentile(np.asarray(data, dtype=float), q)) if data else None


class WorkerStats(BaseModel):
    worker: str
    requests: int
    first_latency_ms: float
    fleet_seconds: float


class TargetStats(BaseModel):
    target: str
    kind: str
    requests: int
    succeeded: int
    failed: int
    cancelled: int
    success_rate: float | None
    failures_by_type: dict[str, int]
    retries_by_reason: dict[str, int]
    attempts: int
    latency_ms: dict[str, float | None]   # p50 p95 p99 max mean
    throughput_per_s: float | None
    wall_seconds: float
    gpu_seconds: float
    gpu_seconds_per_image: float | None
    fleet_seconds: float
    workers: list[WorkerStats]
    cold_waits: int                       # requests that got "no worker ready" at least once
    no_worker_ready_polls: int
    output_bytes: int
    price_per_hour: float | None
    price_source: str | None
    usd_per_1000_gpu: float | None
    usd_per_1000_fleet: float | None
    usd_reported_total: float | None      # sum of the workers' own cost.usd


def _usd_per_1000(seconds: float, images: int, price: float | None) -> float | None:
    if price is None or images == 0:
        return None
    return price / 3600.0 * seconds / images * 1000.0


def summarize(meta: TargetMeta, records: list[RequestRecord]) -> TargetStats:
    done = [r for r in records if r.status != "cancelled"]
    ok = [r for r in done if r.status == "success"]
    failed = [r for r in done if r.status == "failed"]
    lat = [r.latency_ms for r in ok]
    latency: dict[str, float | None] = {f"p{q}": percentile(lat, q) for q in PERCENTILES}
    latency["max"] = max(lat) if lat else None
    latency["mean"] = float(np.mean(lat)) if lat else None
    wall = (max(r.end for r in done) - min(r.start for r in done)) if done else 0.0
    gpu = sum(r.gpu_seconds or 0.0 for r in ok)
    workers: list[WorkerStats] = []
    for name in sorted({r.worker for r in done if r.worker}):
        mine = sorted((r for r in done if r.worker == name), key=lambda r: r.end)
        workers.append(WorkerStats(worker=name, requests=len(mine), first_latency_ms=mine[0].latency_ms,
                                   fleet_seconds=max(r.end for r in mine) - min(r.start for r in mine)))
    fleet = sum(w.fleet_seconds for w in workers)
    reasons = Counter(reason for r in done for reason in r.retried_on)
    reported = [r.cost_usd for r in ok if r.cost_usd is not None]
    return TargetStats(
        target=meta.name, kind=meta.kind, requests=len(records), succeeded=len(ok), failed=len(failed),
        cancelled=len(records) - len(done), success_rate=len(ok) / len(done) if done else None,
        failures_by_type=dict(sorted(Counter(r.error_type or "unknown" for r in failed).items())),
        retries_by_reason=dict(sorted(reasons.items())), attempts=sum(r.attempts for r in done),
        latency_ms=latency, throughput_per_s=len(ok) / wall if wall > 0 else None, wall_seconds=wall,
        gpu_seconds=gpu, gpu_seconds_per_image=gpu / len(ok) if ok else None, fleet_seconds=fleet,
        workers=workers, cold_waits=sum(1 for r in done if r.no_worker_ready),
        no_worker_ready_polls=sum(r.no_worker_ready for r in done), output_bytes=sum(r.output_bytes for r in ok),
        price_per_hour=meta.gpu_price_per_hour, price_source=meta.price_source,
        usd_per_1000_gpu=_usd_per_1000(gpu, len(ok), meta.gpu_price_per_hour),
        usd_per_1000_fleet=_usd_per_1000(fleet, len(ok), meta.gpu_price_per_hour),
        usd_reported_total=sum(reported) if reported else None,
    )
