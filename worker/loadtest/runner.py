"""The load generator: N requests to one target, closed-loop or open-loop, every answer
appended to results.jsonl as it comes.

- closed loop (`concurrency`): C callers, each sending its next request when the last
  one answers; measures what a fixed pool of clients gets.
- open loop (`rate_per_s`): arrivals at exponential gaps (a Poisson process, seeded),
  each sent whether or not earlier ones have answered; measures what real traffic gets,
  queueing included.

Every request is the workflow with fresh seeds (worker/benchmark.py's `fresh`), so no
ComfyUI cache answers it. `stop` (Ctrl-C) ends sending; requests in flight are cancelled
and recorded as "cancelled", so the report is still written from what finished.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from comfy_bridge import logs
from worker.benchmark import fresh
from worker.loadtest.protocol import Outcome, RequestRecord, append_record
from worker.loadtest.targets import Target

log = logs.get(__name__)


@dataclass
class Load:
    requests: int
    concurrency: int | None = None
    rate_per_s: float | None = None
    deadline_s: float = 600.0
    seed: int | None = None


@dataclass
class Progress:
    """Counts for the progress bar; `on_change` is called after each change."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    on_change: Callable[["Progress"], None] = field(default=lambda p: None)

    def bump(self, **counts: int) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + v)
        self.on_change(self)


class TargetRun:
    """One target's share of a run."""

    def __init__(self, target: Target, job: dict[str, Any], load: Load, results: Path,
                 progress: Progress | None = None) -> None:
        self.target = target
        self.job = job
        self.load = load
        self.results = results
        self.progress = progress or Progress()
        self.records: list[RequestRecord] = []
        self._rng = random.Random(load.seed)
        self._tag = uuid.uuid4().hex[:6]

    async def run(self, stop: asyncio.Event) -> list[RequestRecord]:
        if self.load.rate_per_s:
            await self._open_loop(stop)
        else:
            await self._closed_loop(stop)
        return self.records

    async def _closed_loop(self, stop: asyncio.Event) -> None:
        counter = iter(range(self.load.requests))

        async def caller() -> None:
            for index in counter:
                if stop.is_set():
                    return
                await self._one(index)

        await self._until_stopped(stop, [asyncio.create_task(caller()) for _ in range(self.load.concurrency or 1)])

    async def _open_loop(self, stop: asyncio.Event) -> None:
        tasks: list[asyncio.Task[None]] = []

        async def arrivals() -> None:
            arrivals_rng = random.Random(self._rng.random())
            for index in range(self.load.requests):
                if index:
                    await asyncio.sleep(arrivals_rng.expovariate(self.load.rate_per_s or 1.0))
                if stop.is_set():
                    return
                tasks.append(asyncio.create_task(self._one(index)))
            await asyncio.gather(*tasks, return_exceptions=True)

        sender = asyncio.create_task(arrivals())
        await self._until_stopped(stop, [sender], extra=tasks)

    async def _until_stopped(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]],
                             extra: list[asyncio.Task[None]] | None = None) -> None:
        stopper = asyncio.create_task(stop.wait())
        work = asyncio.gather(*tasks)
        await asyncio.wait({stopper, work}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            for t in [*tasks, *(extra or [])]:
                t.cancel()
        stopper.cancel()
        await asyncio.gather(work, stopper, *(extra or []), return_exceptions=True)

    async def _one(self, index: int) -> None:
        job = fresh(self.job, self._rng)
        job["request_id"] = f"lt-{self._tag}-{index:05d}"
        start_wall, start = time.time(), time.perf_counter()
        self.progress.bump(sent=1)
        try:
            outcome = await self.target.call(job, self.load.deadline_s)
        except asyncio.CancelledError:
            await self._record(index, job, start_wall, start, None)
            raise
        except Exception as e:  # a bug in a target must not end the run: record it
            log.exception("target %s raised", self.target.name)
            outcome = Outcome(status="failed", error_type=type(e).__name__, error_message=str(e)[:2000])
        await self._record(index, job, start_wall, start, outcome)

    async def _record(self, index: int, job: dict[str, Any], start_wall: float, start: float,
                      outcome: Outcome | None) -> None:
        elapsed = time.perf_counter() - start
        fields = outcome.model_dump() if outcome is not None else {"status": "cancelled"}
        record = RequestRecord(target=self.target.name, index=index, request_id=job["request_id"],
                               start=start_wall, end=start_wall + elapsed, latency_ms=elapsed * 1000.0, **fields)
        self.records.append(record)
        self.progress.bump(done=record.status == "success", failed=record.status == "failed")
        await asyncio.shield(asyncio.to_thread(append_record, self.results, record))
