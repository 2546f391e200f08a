"""Metrics registry and GET /metrics: outcomes derived from the error hierarchy,
counters and histograms move, the exposition is served."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_bridge import errors
from comfy_bridge import observability as obs
from comfy_bridge.schemas.job import Timings
from comfy_bridge.observability import Metrics, outcome_for


def test_outcome_follows_the_error_hierarchy() -> None:
    assert outcome_for(None) == "success"
    assert outcome_for(errors.MissingModels("x")) == "bad_request"
    assert outcome_for(errors.PayloadTooLarge("x")) == "bad_request"
    assert outcome_for(errors.ExecutionFailed("x")) == "execution_error"
    assert outcome_for(errors.OutOfMemory("x")) == "out_of_memory"
    assert outcome_for(errors.DeliveryFailed("x")) == "delivery_failed"
    assert outcome_for(errors.ComfyUnavailable("x")) == "unavailable"
    assert outcome_for(errors.ShuttingDown("x")) == "unavailable"
    assert outcome_for(errors.ComfyUnrecoverable("x")) == "unrecoverable"
    assert outcome_for(errors.DeadlineExceeded("x")) == "timeout"
    assert outcome_for(asyncio.CancelledError()) == "cancelled"
    assert outcome_for(errors.BridgeError("x")) == "internal_error"
    assert outcome_for(ValueError("x")) == "internal_error"


def test_requests_and_timings_are_recorded() -> None:
    m = Metrics()
    total = "comfy_bridge_requests_total"
    assert m.value(total, outcome="success") == 0
    m.observe_request("success", Timings(queued_ms=2, execution_ms=1340, outputs_ms=12, total_ms=1360))
    m.observe_error(errors.DeadlineExceeded("late"), {"total_ms": 600_000})
    m.observe_error(errors.BadRequest("no"), None)
    assert m.value(total, outcome="success") == 1
    assert m.value(total, outcome="timeout") == 1
    assert m.value(total, outcome="bad_request") == 1
    assert m.value("comfy_bridge_execution_seconds_count") == 1
    assert m.value("comfy_bridge_execution_seconds_sum") == 1.34
    assert m.value("comfy_bridge_execution_seconds_bucket", le="2.5") == 1
    assert m.value("comfy_bridge_execution_seconds_bucket", le="1.0") == 0
    assert m.value("comfy_bridge_delivery_seconds_count") == 1
    assert m.value("comfy_bridge_inputs_seconds_count") == 0  # phase never reached
    assert m.value("comfy_bridge_total_seconds_count") == 2
    assert m.value("comfy_bridge_total_seconds_bucket", le="600.0") == 2


def test_gauges_and_counters() -> None:
    m = Metrics()
    with m.inflight():
        assert m.value("comfy_bridge_inflight_requests") == 1
    assert m.value("comfy_bridge_inflight_requests") == 0
    m.set_queue_depth(3)
    m.webhook_failed()
    m.s3_upload_retried(2)
    m.oom_retried()
    assert m.value("comfy_bridge_comfy_queue_depth") == 3
    assert m.value("comfy_bridge_webhook_failures_total") == 1
    assert m.value("comfy_bridge_s3_upload_retries_total") == 2
    assert m.value("comfy_bridge_oom_retries_total") == 1


def test_supervisor_restarts_and_state_are_followed() -> None:
    class FakeSupervisor:
        state = "starting"

        def __init__(self) -> None:
            self.listeners = []

        def add_listener(self, cb) -> None:
            self.listeners.append(cb)

        def change(self, state: str) -> None:
            for cb in self.listeners:
                cb(state, "why")

    m = Metrics()
    sup = FakeSupervisor()
    m.track_supervisor(sup)
    state = "comfy_bridge_comfyui_state"
    assert m.value(state, comfy_bridge_comfyui_state="starting") == 1
    for s in ("ready", "restarting", "restarting", "ready"):
        sup.change(s)
    assert m.value("comfy_bridge_comfyui_restarts_total") == 2
    assert m.value(state, comfy_bridge_comfyui_state="ready") == 1
    assert m.value(state, comfy_bridge_comfyui_state="restarting") == 0


async def test_metrics_endpoint_serves_text_exposition() -> None:
    m = Metrics()
    app = web.Application()
    obs.add_routes(app, m)
    m.observe_request("success", {"total_ms": 25})
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert 'comfy_bridge_requests_total{outcome="success"} 1.0' in text
    assert 'comfy_bridge_requests_total{outcome="unavailable"} 0.0' in text
    assert "# TYPE comfy_bridge_total_seconds histogram" in text


async def test_process_wide_registry_shortcuts() -> None:
    before = obs.METRICS.value("comfy_bridge_requests_total", outcome="delivery_failed")
    obs.observe_error(errors.DeliveryFailed("s3 down"))
    app = web.Application()
    obs.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        text = await (await client.get("/metrics")).text()
    assert f'comfy_bridge_requests_total{{outcome="delivery_failed"}} {before + 1}' in text
