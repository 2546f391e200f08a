"""WorkerClient.stream against a scripted router and worker: what is retried before the
stream starts, and that a started stream is resent only when the input has a request_id."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from comfy_bridge.jobs import stream_protocol as sp
from tests.support import serve_app
from worker.client import ResultUnknown, WorkerClient

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


class Fakes:
    def __init__(self) -> None:
        self.script: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.worker_url = ""
        self.router_url = ""

    async def route(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"url": self.worker_url, "reqnum": 1, "signature": "sig",
                                  "endpoint": body["endpoint"], "cost": body["cost"], "request_idx": 3})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        rid = body["payload"]["input"]["request_id"]
        step = self.script.pop(0) if self.script else "ok"
        if step == "503-json":
            return web.json_response({"id": rid, "status": "failed", "error": {
                "type": "comfyui_unavailable", "message": "restarting", "retriable": True}}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": sp.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(sp.encode(sp.QueuedEvent(request_id=rid, prompt_id="p1", position=0)))
        if step == "drop-after-event":
            assert request.transport is not None
            request.transport.close()
            return resp
        result = {"id": rid, "status": "success", "prompt_id": "p1", "output": [], "timings": {"total_ms": 1.0}}
        await resp.write(b"event: result\ndata: " + json.dumps(result).encode() + b"\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    f = Fakes()
    runners: list[web.AppRunner] = []
    router, worker = web.Application(), web.Application()
    router.router.add_post("/route/", f.route)
    worker.router.add_post(sp.ROUTE, f.stream)
    router_port = await serve_app(router, runners)
    f.worker_url = f"http://127.0.0.1:{await serve_app(worker, runners)}"
    f.router_url = f"http://127.0.0.1:{router_port}"
    yield f
    for r in runners:
        await r.cleanup()


async def _events(f: Fakes, job: dict[str, Any]) -> list[Any]:
    async with WorkerClient("ep", "key", router_url=f.router_url, backoff_base_s=0.005) as c:
        return [e async for e in c.stream(job, deadline_s=10)]


async def test_a_started_stream_that_breaks_is_not_resent_without_a_request_id(fakes):
    fakes.script = ["drop-after-event"]
    with pytest.raises(ResultUnknown):
        await _events(fakes, {"workflow_json": GRAPH})
    assert len(fakes.calls) == 1


async def test_with_a_request_id_a_broken_stream_is_resent(fakes):
    fakes.script = ["drop-after-event", "ok"]
    events = await _events(fakes, {"workflow_json": GRAPH, "request_id": "again-1"})
    assert isinstance(events[-1], sp.ResultEvent) and events[-1].response.id == "again-1"
    assert len(fakes.calls) == 2


async def test_a_503_before_the_stream_starts_is_retried(fakes):
    fakes.script = ["503-json", "ok"]
    events = await _events(fakes, {"workflow_json": GRAPH})
    assert isinstance(events[-1], sp.ResultEvent) and len(fakes.calls) == 2
