"""Readiness and health wiring: what reaches the autoscaler as an error, and what does not."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from comfy_bridge.app import build_app
from comfy_bridge.errors import MissingModels, MissingNodeClasses, WorkflowRejected
from comfy_bridge.settings import BridgeSettings
from tests.worker.conftest import CKPT, sd15_graph
from worker import readiness
from worker.lifecycle import WorkerLifecycle
from worker.pyworker import _watch_failure
from worker.settings import WorkerSettings


class Backend:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def backend_errored(self, msg: str) -> None:
        self.errors.append(msg)


class FakeSupervisor:
    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.started = self.stopped = 0

    def add_listener(self, cb: Any) -> None:
        self.listeners.append(cb)

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    def emit(self, state: str, reason: str) -> None:
        for cb in self.listeners:
            cb(state, reason)


@pytest.fixture
async def bridge_url(double) -> AsyncIterator[str]:
    runner = web.AppRunner(build_app(BridgeSettings(comfyui_url=double.url)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


async def test_supervisor_failed_errors_the_worker_and_restarting_does_not(double, bridge_url):
    sup = FakeSupervisor()
    backend = Backend()
    lc = WorkerLifecycle(WorkerSettings(ready_timeout_s=10), bridge_url=bridge_url, comfyui_url=double.url,
                         benchmark_graph=sd15_graph(), supervisor=sup)
    lc.attach(backend)
    async with lc:
        assert sup.started == 1 and lc.ready.is_set()
        sup.emit("restarting", "ComfyUI exited with code -9")
        sup.emit("ready", "answering again")
        assert backend.errors == []
        sup.emit("failed", "3 crashes in 600 s: CUDA error")
        sup.emit("failed", "again")
        assert backend.errors == ["ComfyUI failed and cannot be restarted: 3 crashes in 600 s: CUDA error"]
    assert sup.stopped >= 1


async def test_readiness_times_out_with_a_reason_when_comfyui_never_answers():
    lc = WorkerLifecycle(WorkerSettings(ready_timeout_s=0.3), bridge_url="http://127.0.0.1:9",
                         comfyui_url="http://127.0.0.1:9")
    with pytest.raises(Exception) as info:
        async with lc:
            pass
    assert "did not become ready" in str(info.value)
    await lc.close()


def test_bridge_failure_saying_unrecoverable_errors_the_worker():
    lc = WorkerLifecycle(WorkerSettings(), bridge_url="http://x", comfyui_url="http://y")
    backend = Backend()
    lc.attach(backend)
    _watch_failure(json.dumps({"id": "a", "status": "failed", "error": {
        "type": "comfyui_unavailable", "message": "restarting", "retriable": True}}).encode(), lc)
    assert backend.errors == []
    _watch_failure(b"not json", lc)
    _watch_failure(json.dumps({"id": "a", "status": "failed", "error": {
        "type": "comfyui_unrecoverable", "message": "ComfyUI crashed 3 times", "retriable": True}}).encode(), lc)
    assert backend.errors == ["ComfyUI crashed 3 times"]


async def test_check_ready_names_missing_classes_samplers_and_models(double):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{double.url}/object_info") as r:
            info = await r.json()
    readiness.check_graph(info, sd15_graph())  # all there
    with pytest.raises(MissingNodeClasses) as e1:
        readiness.check_graph(info, sd15_graph(), required_nodes=["ClownsharKSampler_Beta", "UltimateSDUpscale"])
    assert e1.value.details["classes"] == ["UltimateSDUpscale"]
    bad_sampler = sd15_graph(sampler="res_9s")
    with pytest.raises(WorkflowRejected) as e2:
        readiness.check_graph(info, bad_sampler)
    assert "res_9s" in e2.value.message
    no_model = sd15_graph()
    no_model["4"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    with pytest.raises(MissingModels):
        readiness.check_graph(info, no_model)
    async with aiohttp.ClientSession() as s:
        await readiness.check_models(s, double.url, [f"checkpoints/{CKPT}"], info)
        with pytest.raises(MissingModels) as e3:
            await readiness.check_models(s, double.url, ["checkpoints/flux1-dev.safetensors", f"checkpoints/{CKPT}"], info)
    assert e3.value.details["models"] == ["checkpoints/flux1-dev.safetensors"]
