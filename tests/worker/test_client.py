"""worker.client against a scripted router and worker: retries, deadline, no double sends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from comfy_bridge.errors import ComfyUnavailable, MissingModels
from tests.worker.conftest import free_port
from worker.client import (
    CallTimeout,
    ResultUnknown,
    RouterError,
    WorkerClient,
    WorkerHTTPError,
    generate_sync,
)

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def success(request_id: str) -> dict[str, Any]:
    return {"id": request_id, "status": "success", "prompt_id": "p1",
            "output": [{"filename": "x_00001_.png", "node_id": "2", "output_type": "images",
                        "mimetype": "image/png", "bytes": 3, "data": "AAAA"}],
            "timings": {"total_ms": 5.0}, "workload": 1.0}


def failure(request_id: str, type_: str, message: str, retriable: bool = False, **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "status": "failed",
            "error": {"type": type_, "message": message, "retriable": retriable, **extra}}


@dataclass
class Fakes:
    """A router and a worker whose next answers are scripted; both record what they got."""

    router_script: list[Any] = field(default_factory=list)
    worker_script: list[Any] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    router_url: str = ""
    worker_url: str = ""

    async def route(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.routes.append(body)
        step = self.router_script.pop(0) if self.router_script else "ready"
        if step == "ready":
            return web.json_response({"url": self.worker_url, "reqnum": len(self.routes), "signature": "sig",
                                      "endpoint": body["endpoint"], "cost": body["cost"], "request_idx": 7})
        if step == "dead-worker":
            return web.json_response({"url": f"http://127.0.0.1:{free_port()}", "reqnum": 1, "signature": "s",
                                      "endpoint": body["endpoint"], "cost": body["cost"], "request_idx": 7})
        if step == "hang":  # never answers: the caller's own deadline ends the call
            await asyncio.Event().wait()
        if step == "none":
            return web.json_response({"endpoint": body["endpoint"], "request_idx": 7,
                                      "status": {"ready": 0, "loading": 1, "error": 0}})
        return web.json_response({"error": "scripted"}, status=int(step))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        rid = body["payload"]["input"]["request_id"]
        step = self.worker_script.pop(0) if self.worker_script else 200
        if step == "drop":  # took the request, then the connection broke
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if step == 200:
            return web.json_response(success(rid))
        if step == 429:
            return web.Response(status=429)
        if step == 401:
            return web.Response(status=401)
        if step == 503:
            return web.json_response(failure(rid, "comfyui_unavailable", "restarting", True), status=503)
        if step == 422:
            return web.json_response(failure(rid, "missing_models", "no sd15.safetensors",
                                             models=[{"file": "sd15.safetensors"}]), status=422)
        raise AssertionError(step)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    f = Fakes()
    runners = []
    for path, handler in (("/route/", f.route), ("/generate/sync", f.generate)):
        app = web.Application()
        app.router.add_post(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        if path == "/route/":
            f.router_url = url
        else:
            f.worker_url = url
    yield f
    for r in runners:
        await r.cleanup()


def client(f: Fakes) -> WorkerClient:
    return WorkerClient("ep", "key", router_url=f.router_url, backoff_base_s=0.005, backoff_max_s=0.02)


async def test_retries_no_worker_ready_router_errors_429_and_503_then_succeeds(fakes):
    fakes.router_script = ["none", "none", "503", "ready", "ready", "ready"]
    fakes.worker_script = [429, 503, 200]
    async with client(fakes) as c:
        result = await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert result.status == "success" and result.output[0].data == "AAAA"
    assert len(fakes.calls) == 3
    assert [r["request_idx"] for r in fakes.routes] == [0, 7, 7, 7, 7, 7]  # polls keep their place
    assert all(r["cost"] == 1.0 and r["api_key"] == "key" for r in fakes.routes)  # cost in units
    # The worker got the route's auth_data and the input, with one request_id throughout.
    assert fakes.calls[0]["auth_data"]["signature"] == "sig"
    assert len({c["payload"]["input"]["request_id"] for c in fakes.calls}) == 1


async def test_a_request_a_worker_accepted_is_not_sent_twice(fakes):
    fakes.worker_script = ["drop"]
    async with client(fakes) as c:
        with pytest.raises(ResultUnknown):
            await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert len(fakes.calls) == 1


async def test_a_caller_request_id_makes_the_resend_safe(fakes):
    fakes.worker_script = ["drop", 200]
    async with client(fakes) as c:
        result = await c.generate({"workflow_json": GRAPH, "request_id": "job-42"}, deadline_s=20)
    assert result.id == "job-42"
    assert len(fakes.calls) == 2


async def test_an_unreachable_worker_is_routed_around(fakes):
    fakes.router_script = ["dead-worker", "ready"]
    async with client(fakes) as c:
        result = await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert result.status == "success"
    assert len(fakes.routes) == 2 and len(fakes.calls) == 1


async def test_deadline_is_honoured_while_no_worker_is_ready(fakes):
    fakes.router_script = ["none"] * 10_000
    async with client(fakes) as c:
        with pytest.raises(CallTimeout) as info:
            await c.generate({"workflow_json": GRAPH}, deadline_s=0.3)
    assert "no worker ready" in info.value.reason
    assert fakes.calls == []


async def test_a_route_call_cut_short_by_the_deadline_reports_what_was_in_the_way(fakes):
    # The router call that our own deadline ends is not "router unreachable": the reason is
    # the last thing that kept the request from a worker.
    fakes.router_script = ["none", "hang"]
    async with client(fakes) as c:
        with pytest.raises(CallTimeout) as info:
            await c.generate({"workflow_json": GRAPH}, deadline_s=1.0)
    assert "no worker ready" in info.value.reason
    assert len(fakes.routes) == 2 and fakes.calls == []


async def test_failures_raise_typed_errors_and_are_not_retried(fakes):
    fakes.worker_script = [422]
    async with client(fakes) as c:
        with pytest.raises(MissingModels) as info:
            await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert info.value.http_status == 422
    assert info.value.details["models"] == [{"file": "sd15.safetensors"}]
    assert info.value.response.error.type == "missing_models"
    assert len(fakes.calls) == 1

    fakes.worker_script = [401]
    async with client(fakes) as c:
        with pytest.raises(WorkerHTTPError) as info2:
            await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert info2.value.status == 401


async def test_router_refusal_is_final(fakes):
    fakes.router_script = ["401"]
    async with client(fakes) as c:
        with pytest.raises(RouterError) as info:
            await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    assert info.value.status == 401
    assert len(fakes.routes) == 1


async def test_503_until_the_deadline_times_out_as_retriable(fakes):
    fakes.worker_script = [503] * 10_000
    async with client(fakes) as c:
        with pytest.raises(CallTimeout) as info:
            # Long enough for the first 503 to arrive even on a loaded machine; the
            # backoff (5-20 ms) keeps retrying until the deadline.
            await c.generate({"workflow_json": GRAPH}, deadline_s=3.0)
    assert "503" in info.value.reason
    assert issubclass(ComfyUnavailable, Exception)


async def test_sync_wrapper(fakes):
    result = await asyncio.to_thread(
        generate_sync, {"input": {"workflow_json": GRAPH, "request_id": "s-1"}},
        endpoint="ep", api_key="key", router_url=fakes.router_url, deadline_s=20,
    )
    assert result.id == "s-1"


async def test_worker_gets_the_time_left_as_timeout_s(fakes):
    fakes.worker_script = [503, 200]
    async with client(fakes) as c:
        await c.generate({"workflow_json": GRAPH}, deadline_s=20)
    first, second = (call["payload"]["input"]["timeout_s"] for call in fakes.calls)
    assert 17.0 <= second <= first <= 18.0  # 20 s less a 2 s margin, shrinking with each try


async def test_worker_timeout_never_exceeds_the_callers_own(fakes):
    async with client(fakes) as c:
        await c.generate({"workflow_json": GRAPH, "timeout_s": 5}, deadline_s=60)
        await c.generate({"workflow_json": GRAPH, "timeout_s": 500}, deadline_s=3)
    assert fakes.calls[0]["payload"]["input"]["timeout_s"] == 5
    assert 2.6 <= fakes.calls[1]["payload"]["input"]["timeout_s"] <= 2.7  # 3 s less a tenth
