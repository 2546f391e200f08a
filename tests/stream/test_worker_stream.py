"""/generate/stream through the unmodified `vastai` PyWorker (`comfy-worker serve` behind
the router emulator): signed like /generate/sync, the same units, events relayed as they
come, honest metrics from the final event; and WorkerClient.stream's typed events."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from comfy_bridge.errors import ExecutionFailed
from comfy_bridge.jobs import stream_protocol as sp
from tests.comfy_double.faults import ExecError
from tests.stream.conftest import read_stream
from tests.worker.conftest import sd15_graph
from worker.client import WorkerClient

pytestmark = pytest.mark.timeout(90)

UNITS_3_STEPS = 1 + 3 * 128 * 128 / 1024**2 * 1.65  # sd15_graph(steps=3), x the SD1.5 family factor (worker/model_family.py)


async def test_stream_through_the_pyworker_arrives_while_the_prompt_runs(start_worker, double, emulator):
    w = await start_worker(double)
    await w.wait_ready()
    double.hang_next_prompt()
    first_at: list[float] = []

    async def on_event(event) -> None:
        if not first_at:
            first_at.append(time.monotonic())
            assert double.queue.running  # ComfyUI is still running the prompt
            double.release()

    body = w.signed({"workflow_json": sd15_graph(steps=3), "request_id": "ws-1"})
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{w.url}/generate/stream", json=body) as r:
            streamed = await read_stream(r, on_event)
    assert streamed.status == 200 and streamed.content_type == sp.CONTENT_TYPE
    assert streamed.names[0] == "queued" and streamed.names[-1] == "result"
    assert first_at[0] < streamed.arrived[-1]
    assert streamed.final.response.id == "ws-1"
    sent = json.loads(streamed.raw[-1])  # the result as the worker sent it: with `cost`, as /generate/sync
    assert sent["cost"]["gpu_seconds"] == pytest.approx(sent["timings"]["execution_ms"] / 1000, abs=1e-3)
    report = await w.wait_report(lambda r: r["new_load"] == pytest.approx(UNITS_3_STEPS, abs=1e-3))
    assert report["error_msg"] == ""
    done = await w.wait_deleted(lambda d: d["request_idx"] == body["auth_data"]["request_idx"])
    assert done["success"] is True

    # Signed like /generate/sync: a forged signature gets the framework's 401.
    forged = w.signed({"workflow_json": sd15_graph()})
    forged["auth_data"]["signature"] = forged["auth_data"]["signature"][:-8] + "AAAAAAA="
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{w.url}/generate/stream", json=forged) as r:
            assert r.status == 401


async def test_client_stream_events_then_a_failure_reported_as_an_error(start_worker, double, emulator):
    """WorkerClient.stream: typed events ending with the result; then a failing one raises
    the bridge's error class and is reported to the autoscaler as an error, not served work."""
    w = await start_worker(double)
    await w.wait_ready()
    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        events = [e async for e in client.stream({"workflow_json": sd15_graph(steps=3), "request_id": "c-1"},
                                                 deadline_s=30)]
    assert isinstance(events[-1], sp.ResultEvent) and events[-1].response.id == "c-1"
    steps = [e for e in events if isinstance(e, sp.ProgressEvent) and e.value is not None]
    assert [e.value for e in steps] == [1.0, 2.0, 3.0]
    assert emulator.routed[-1]["cost"] == pytest.approx(UNITS_3_STEPS, abs=1e-3)

    double.faults.exec_errors.append(ExecError("RuntimeError", "boom", class_type="KSampler"))
    events = []
    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        with pytest.raises(ExecutionFailed) as info:
            async for event in client.stream({"workflow_json": sd15_graph(steps=2)}, deadline_s=30):
                events.append(event)
    assert info.value.http_status == 500 and "boom" in info.value.message
    assert [e.event for e in events][:2] == ["queued", "started"]
    done = await w.wait_deleted(lambda d: d["request_idx"] == emulator.routed[-1]["request_idx"])
    assert done["success"] is False  # the stream began with 200, but the generation failed
