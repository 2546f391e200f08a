"""The PyWorker lifecycle: readiness before the benchmark, and health after it.

The framework enters this context manager, then runs the benchmark, then tells the
autoscaler the worker is loaded. So the benchmark only starts once ComfyUI really
serves what the worker needs (Vast's template once raced its benchmark against the API
wrapper and left workers errored for good).

Then max_perf: `benchmark_run` (worker/benchmark.py `measure`) times the benchmark's
generations by ComfyUI's own execution timings and writes the result to the framework's
`.has_benchmark` cache in the state folder, so the framework reports it without its own
wall-clock rounds (they run only when that measurement failed). Each start-up phase is
marked on the cold-start timeline (worker/cold_start.py), which ends with the `ready` line.

Health afterwards: a ComfyUI that is gone for good reaches the autoscaler as an
error_msg (`backend.backend_errored`), so Vast replaces the worker; a restart in progress
does not. With a supervised child that is the supervisor's call: its "failed" state is
final, "restarting" is not. With an external ComfyUI (--comfyui-url) nobody knows, so
it is declared gone after COMFY_WORKER_COMFYUI_GONE_AFTER_S seconds without an answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import aiohttp

from comfy_bridge import logs
from comfy_bridge.settings import BridgeSettings
from worker import readiness
from worker.benchmark import BENCHMARK_FILE, MEASURE_FILE, Measurement
from worker.cold_start import Timeline
from worker.settings import WorkerSettings

log = logs.get(__name__)


class ErrorSink(Protocol):
    def backend_errored(self, msg: str) -> None: ...


class WorkerLifecycle:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        bridge_url: str,
        comfyui_url: str,
        benchmark_graph: dict[str, Any] | None = None,
        staged_names: list[str] | None = None,
        supervisor: Any = None,
        workflows_dir: Path | None = BridgeSettings.model_fields["workflows_dir"].default,
        timeline: Timeline | None = None,
        benchmark_run: Callable[..., Awaitable[Measurement | None]] | None = None,
        on_measured: Callable[[Measurement], None] | None = None,
        state_dir: Path | None = None,
        before_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.workflows_dir = workflows_dir
        self.bridge_url = bridge_url.rstrip("/")
        self.comfyui_url = comfyui_url.rstrip("/")
        self.benchmark_graph = benchmark_graph
        self.staged_names = staged_names or []
        self.supervisor = supervisor
        self.timeline = timeline or Timeline()
        self.benchmark_run = benchmark_run
        self.on_measured = on_measured
        self.state_dir = state_dir or Path.cwd()
        # Work that ran while ComfyUI started (worker/provision_overlap.py) and must end first.
        self.before_ready = before_ready
        self.backend: ErrorSink | None = None
        self.error: str | None = None
        self.ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None
        self._listening = False
        self._closing: asyncio.Future[None] | None = None

    def attach(self, backend: ErrorSink) -> None:
        """The framework Backend that reports errors to the autoscaler."""
        self.backend = backend

    def report_error(self, msg: str) -> None:
        """Tell the autoscaler this worker is beyond repair (once; Vast then replaces it)."""
        if self.error is not None:
            return
        self.error = msg
        log.error("worker errored: %s", msg)
        if self.backend is not None:
            self.backend.backend_errored(msg)

    # --- the framework's hook -----------------------------------------------------------

    async def __aenter__(self) -> "WorkerLifecycle":
        self._session = aiohttp.ClientSession()
        if self.supervisor is not None:
            if not self._listening:
                self.supervisor.add_listener(self._on_supervisor_state)
                self._listening = True
            await self.supervisor.start()
            self.timeline.mark("comfyui_up")
        if self.before_ready is not None:
            await self.before_ready()
            self.timeline.mark("models_verified")
        await readiness.check_ready(
            self._session,
            ready_url=f"{self.bridge_url}/ready",
            comfyui_url=self.comfyui_url,
            graph=self.benchmark_graph,
            required_nodes=self.settings.required_nodes,
            required_models=self.settings.required_models,
            staged_names=self.staged_names,
            timeout_s=self.settings.ready_timeout_s,
            workflows_dir=self.workflows_dir,
        )
        self.timeline.mark("ready_check")
        await self._benchmark()
        if self.supervisor is None:
            self._watch = asyncio.create_task(self._watch_external(), name="comfyui-health")
        self.ready.set()
        self.timeline.log_ready()
        return self

    async def _benchmark(self) -> None:
        """max_perf from ComfyUI's timings into `.has_benchmark`, or the cached one."""
        if self.benchmark_run is None:
            return
        assert self._session is not None
        done, saved = self.state_dir / BENCHMARK_FILE, self.state_dir / MEASURE_FILE
        if done.exists():
            try:
                m = Measurement(**json.loads(saved.read_text()))
            except (OSError, ValueError, TypeError):
                return  # measured by the framework's own rounds: no seconds_per_unit to learn from
            self.timeline.details["benchmark"] = {"cached": True, "units_per_s": round(m.units_per_s, 4)}
        else:
            m = await self.benchmark_run(self._session, on_warmup=lambda: self.timeline.mark("first_model_load"))
            if m is None:
                log.warning("no benchmark generation succeeded; the framework runs its own")
                return
            saved.write_text(json.dumps(dataclasses.asdict(m)))
            done.write_text(str(m.units_per_s))
            self.timeline.mark("benchmark", benchmark={
                "units_per_s": round(m.units_per_s, 4), "generations": m.generations,
                "execution_s": [round(x, 4) for x in m.execution_s], "warmup_s": m.warmup_s,
                "standard_error": round(m.spread, 4), "failures": m.failures})
        if self.on_measured is not None:
            self.on_measured(m)

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop watching and stop the ComfyUI child; safe to call more than once, and
        concurrently (the framework's cancellation and serve's cleanup both call it)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if self.supervisor is not None:
            try:
                await self.supervisor.stop()
            except Exception:
                log.warning("stopping ComfyUI failed", exc_info=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- health -------------------------------------------------------------------------

    def _on_supervisor_state(self, state: str, reason: Any = None) -> Any:
        if state == "failed":
            self.report_error(f"ComfyUI failed and cannot be restarted: {reason or 'no reason given'}")
        elif state == "restarting":
            log.warning("ComfyUI is restarting: %s", reason or "")
        return None

    async def _watch_external(self) -> None:
        """Declare an external ComfyUI gone once it has not answered for the grace period."""
        assert self._session is not None
        last_ok = time.monotonic()
        interval = self.settings.health_interval_s
        while True:
            await asyncio.sleep(interval)
            if await self._answers():
                last_ok = time.monotonic()
                continue
            silent = time.monotonic() - last_ok
            if silent >= self.settings.comfyui_gone_after_s:
                self.report_error(
                    f"ComfyUI at {self.comfyui_url} has not answered for {silent:.0f} s"
                )
                return
            log.warning("ComfyUI is not answering (for %.0f s)", silent)

    async def _answers(self) -> bool:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, min(10.0, self.settings.health_interval_s * 2)))
            async with self._session.get(f"{self.comfyui_url}/system_stats", timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

