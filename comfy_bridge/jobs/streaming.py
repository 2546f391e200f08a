"""`POST /generate/stream`: the `/generate/sync` request, answered as Server-Sent Events.

The body is parsed and the job run exactly as for /generate/sync (api_router.py,
serving.py); the runner reports each submission to a StreamSink (stream_events.py)
whose events are written as they come (stream_protocol.py). The response is opened
at the first event, so an error found before anything was submitted (a bad payload,
missing nodes, a graph ComfyUI rejects, ComfyUI down) is the plain JSON failure with
its status, like /generate/sync. Once streaming, the answer ends with exactly one
`result` or `error` event (carrying its HTTP status); a comment line goes out after
`stream_keepalive_s` of silence so proxies keep the connection. A caller who leaves
is treated as on /generate/sync (BridgeRoutes.caller_left).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.delivery import inline
from comfy_bridge.errors import BridgeError, ComfyUnavailable
from comfy_bridge.jobs import stream_protocol as sp
from comfy_bridge.jobs.api_router import BridgeRoutes, error_response
from comfy_bridge.schemas.job import GenerateResponse, JobInput
from comfy_bridge.jobs.serving import failure_body
from comfy_bridge.jobs.stream_events import StreamSink

log = logs.get(__name__)

class StreamRoute:
    def __init__(self, routes: BridgeRoutes) -> None:
        self.routes = routes

    def register(self, app: web.Application) -> None:
        app.router.add_post(sp.ROUTE, self.generate_stream)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        routes = self.routes
        with routes.metrics.inflight():
            parsed = await routes._parse(request)
            if not isinstance(parsed, JobInput):
                err, request_id = parsed
                routes._finished(request_id, started, err)
                return error_response(err, request_id)
            return await self._stream(parsed, request, started)

    async def _stream(self, job: JobInput, request: web.Request, started: float) -> web.StreamResponse:
        routes = self.routes
        sink = StreamSink(job, routes.client, routes.runner.settings)
        task = asyncio.ensure_future(routes.runner.run(job, events=sink))
        task.add_done_callback(lambda _: sink.close())
        keepalive_s = routes.runner.settings.stream_keepalive_s
        resp: web.StreamResponse | None = None
        try:
            while True:
                try:
                    event = await asyncio.wait_for(sink.queue.get(), keepalive_s)
                except asyncio.TimeoutError:
                    resp = resp or await _open(request)
                    await resp.write(sp.KEEPALIVE)
                    continue
                if event is None:
                    break
                resp = resp or await _open(request)
                await resp.write(sp.encode(event))
            response, err = _outcome(task, job)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if not task.done():
                routes.caller_left(job, task, started, exc)
            raise
        if err is not None:
            routes._finished(job.request_id, started, err)
            if resp is None:  # nothing was streamed yet: the plain failure, as /generate/sync
                return error_response(err, job.request_id)
            await resp.write(sp.encode_error(failure_body(job.request_id, err), err.status))
        else:
            assert response is not None
            routes._finished(job.request_id, started, None, response)
            resp = resp or await _open(request)
            await inline.write_parts(resp, sp.result_parts(inline.render_parts(response)))
        await resp.write_eof()
        return resp


async def _open(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": sp.CONTENT_TYPE,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx-style proxies: pass each event on at once
    })
    await resp.prepare(request)
    return resp


def _outcome(task: asyncio.Future[Any], job: JobInput) -> tuple[GenerateResponse | None, BridgeError | None]:
    if task.cancelled():
        return None, ComfyUnavailable("the request was cancelled (the bridge is shutting down); retry it")
    exc = task.exception()
    if exc is None:
        return task.result(), None
    if isinstance(exc, BridgeError):
        return None, exc
    with logs.bind(request_id=job.request_id):
        log.error("unexpected error while running the request", exc_info=exc)
    return None, BridgeError("internal error in the bridge; it was logged with this request id")
