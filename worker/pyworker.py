"""The Vast PyWorker: `vastai.serverless.server.Worker` configured for ComfyUI.

Three routes, forwarded to the comfy_bridge app on loopback: `/generate/sync`,
`/generate/stream` (Server-Sent Events, relayed by stream_relay.py with the same workload
units), and `/outputs/fetch` (`{"spool_key": ...}`: an output kept on the spool after a
failed delivery, comfy_bridge/delivery/fetch_routes.py; zero load units, no benchmark,
and signed like every PyWorker route). How each piece of the configuration answers the issue:

- allow_parallel_requests=True: a request goes to the bridge, and so into ComfyUI's queue,
  the moment it arrives; the GPU starts the next prompt while the previous one's outputs
  are encoded and sent. The framework still refuses (429) what would wait longer than
  max_queue_time (queued units / max_perf).
- workload_calculator: units from the graph (worker/workload.py), the same units the
  benchmark measures max_perf in.
- benchmark_config: a few generations of a configurable workflow with fresh seeds
  (worker/benchmark.py), not the framework's default 8 x 10.
- response relay: passes the bridge's status and body through (streamed; a success gains
  `cost`, worker/cost.py), and notes the status so a failed generation is reported as an error (honest_metrics.py);
  a `comfyui_unrecoverable` failure errors the worker so Vast replaces it.
- lifecycle: readiness and health (lifecycle.py), instead of scraping ComfyUI's log.
- body cap: bodies over COMFY_WORKER_MAX_BODY_BYTES get 413 before the framework reads
  them whole to check the signature (body_cap.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import ClientResponse, web
from vastai.serverless.server import worker as vast

from comfy_bridge import logs
from comfy_bridge.delivery.fetch_routes import FETCH_ROUTE
from worker import benchmark, body_cap, honest_metrics, stream_relay
from worker.cost import CostSplicer
from worker.lifecycle import WorkerLifecycle
from worker.settings import WorkerSettings
from worker.workload import WorkloadModel

log = logs.get(__name__)

ROUTE = "/generate/sync"
_CHUNK = 256 * 1024


def make_relay(
    lifecycle: WorkerLifecycle | None = None,
    gpu_price_per_hour: float | None = None,
    *,
    generation: bool = True,
) -> Callable[[web.Request, ClientResponse], Awaitable[web.StreamResponse]]:
    """The response generator: the bridge's answer, status and body, to the caller;
    a success gains `cost` (worker/cost.py).

    `generation=False` (the fetch route): its status says nothing of generations, so it
    is not noted for honest_metrics, and its body (a file) is passed through as is."""

    async def relay(client_request: web.Request, model_response: ClientResponse) -> web.StreamResponse:
        status = model_response.status
        if generation:
            honest_metrics.note_status(status)
        content_type = model_response.headers.get("Content-Type", "application/json")
        try:
            if not 200 <= status < 300:
                body = await model_response.read()
                _watch_failure(body, lifecycle)
                return web.Response(body=body, status=status, headers={"Content-Type": content_type})
            resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            # The body grows: no Content-Length. A fetched file is not a generation: as is.
            splicer = CostSplicer(gpu_price_per_hour) if generation else None
            await resp.prepare(client_request)
            async for chunk in model_response.content.iter_chunked(_CHUNK):
                if out := (splicer.feed(chunk) if splicer is not None else chunk):
                    await resp.write(out)
            if splicer is not None:
                await resp.write(splicer.finish())
            await resp.write_eof()
            return resp
        finally:
            model_response.release()

    return relay


def _watch_failure(body: bytes, lifecycle: WorkerLifecycle | None) -> None:
    """A bridge that says ComfyUI is gone for good (or its GPU is: a fatal CUDA error, which
    with an external ComfyUI nobody else acts on) makes the worker ask to be replaced."""
    if lifecycle is None or len(body) > 1 << 20:
        return
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return
    if not isinstance(error, dict):
        return
    if error.get("type") == "comfyui_unrecoverable":
        lifecycle.report_error(str(error.get("message") or "ComfyUI is gone for good"))
    elif error.get("fatal") is True:  # a CUDA-fatal error: this GPU context is broken for good
        lifecycle.report_error(f"fatal GPU error: {str(error.get('message') or '')[:1000]}")


def build_worker(
    settings: WorkerSettings,
    *,
    bridge_port: int,
    lifecycle: WorkerLifecycle,
    workload: WorkloadModel,
    benchmark_job: dict[str, Any],
) -> vast.Worker:
    """A framework Worker wired to the bridge at 127.0.0.1:`bridge_port` (env already set)."""
    handler = vast.HandlerConfig(
        route=ROUTE,
        allow_parallel_requests=settings.parallel_requests,
        max_queue_time=settings.max_queue_time_s,
        workload_calculator=workload.payload_units,
        benchmark_config=vast.BenchmarkConfig(
            generator=benchmark.payload_factory(benchmark_job),
            runs=settings.benchmark_runs,
            concurrency=settings.benchmark_concurrency,
            do_warmup=settings.benchmark_warmup,
        ),
        response_generator=make_relay(lifecycle, settings.gpu_price_per_hour),
    )
    stream_handler = vast.HandlerConfig(
        route=stream_relay.ROUTE,
        allow_parallel_requests=settings.parallel_requests,
        max_queue_time=settings.max_queue_time_s,
        workload_calculator=workload.payload_units,
        response_generator=stream_relay.make_stream_relay(
            make_relay(lifecycle, settings.gpu_price_per_hour), lambda body: _watch_failure(body, lifecycle),
            settings.gpu_price_per_hour),
    )
    fetch = vast.HandlerConfig(
        route=FETCH_ROUTE,
        allow_parallel_requests=True,
        max_queue_time=None,  # reading a file from disk never waits for the GPU
        workload_calculator=lambda payload: 0.0,
        response_generator=make_relay(None, generation=False),
    )
    config = vast.WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=bridge_port,
        handlers=[handler, stream_handler, fetch],
        lifecycle=lifecycle,
    )
    level = logging.getLogger().level
    handler_levels = [(h, h.level) for h in logging.getLogger().handlers]
    w = vast.Worker(config)
    # Worker() forces the root logger (and its handlers) to DEBUG; put ours back.
    logging.getLogger().setLevel(level)
    for h, lvl in handler_levels:
        h.setLevel(lvl)
    honest_metrics.install(w.backend)
    body_cap.install(w, settings.max_body_bytes or body_cap.default_cap())
    lifecycle.attach(w.backend)
    return w
