"""Deadlines, dropped websockets, callers that leave, ComfyUI going away, health checks."""

from __future__ import annotations

import asyncio

import aiohttp

from comfy_bridge.app import CLIENT_KEY
from comfy_bridge.comfyui.client import ComfyClient
from comfy_bridge.errors import ComfyUnavailable
from tests.support import save_graph


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def test_deadline_interrupts_running_prompt(bridge, double):
    double.hang_next_prompt()
    status, body = await bridge.generate(save_graph(), timeout_s=0.5)
    assert status == 504, body
    assert body["error"]["type"] == "timeout" and body["error"]["retriable"] is True
    assert "interrupted" in body["error"]["message"]
    [req] = double.requests_to("/interrupt", "POST")
    assert req.json == {"prompt_id": body["prompt_id"]}
    assert bridge.runner.prompts_inflight == 0


async def test_deadline_removes_pending_prompt(bridge, double):
    double.hang_next_prompt()
    blocker = asyncio.ensure_future(bridge.generate(save_graph(color=1), timeout_s=30))
    await _until(lambda: double.queue.running)
    status, body = await bridge.generate(save_graph(color=2), timeout_s=0.3)
    assert status == 504, body
    assert "removed from the queue" in body["error"]["message"]
    deletes = double.requests_to("/queue", "POST")
    assert deletes and deletes[0].json == {"delete": [body["prompt_id"]]}
    double.release()
    status, _ = await blocker
    assert status == 200


async def test_websocket_dropped_mid_prompt_completes_once(bridge, double):
    double.close_websockets_mid_prompt()
    status, body = await bridge.generate(save_graph(batch=2))
    assert status == 200, body
    assert len(body["output"]) == 2
    assert double.prompts_finished == 1
    assert bridge.runner.prompts_inflight == 0
    assert bridge.app[CLIENT_KEY].connections >= 2  # it really reconnected
    # And the bridge is still serving on its new socket.
    status, _ = await bridge.generate(save_graph())
    assert status == 200


async def test_client_reconciles_prompt_finished_while_disconnected(double):
    """Events missed entirely: the prompt ends while the socket is down; /history settles it."""
    client = ComfyClient(double.url)
    await client.start()
    try:
        await client.ensure_connected()
        double.hang_next_prompt()
        await client.submit(save_graph(prefix="cvw/x/y"), "p-reconcile")
        await _until(lambda: double.queue.running)
        await double.stop()          # socket gone; the running prompt is lost with the process
        await double.start()
        result_or_error = await asyncio.wait_for(asyncio.gather(client.wait("p-reconcile"), return_exceptions=True), 10)
        [outcome] = result_or_error
        assert isinstance(outcome, ComfyUnavailable)
        assert "lost the prompt" in outcome.message
        assert client.inflight == 0
    finally:
        await client.close()


async def test_fail_inflight_wakes_waiters(double):
    client = ComfyClient(double.url)
    await client.start()
    try:
        double.hang_next_prompt()
        await client.submit(save_graph(prefix="cvw/x/z"), "p-fail")
        waiter = asyncio.ensure_future(client.wait("p-fail"))
        await _until(lambda: double.queue.running)
        assert client.fail_inflight(ComfyUnavailable("ComfyUI died")) == 1
        assert client.fail_inflight(ComfyUnavailable("again")) == 0  # never twice
        outcome = await asyncio.gather(waiter, return_exceptions=True)
        assert isinstance(outcome[0], ComfyUnavailable)
    finally:
        double.release()
        await client.close()


async def test_caller_leaving_interrupts_prompt(bridge, double):
    double.hang_next_prompt()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(bridge.url + "/generate/sync", json={"input": {"workflow_json": save_graph()}})
        )
        await _until(lambda: double.queue.running)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    await _until(lambda: bool(double.requests_to("/interrupt", "POST")))
    await double.wait_idle()
    await _until(lambda: bridge.runner.prompts_inflight == 0)


async def test_inline_caller_leaving_frees_the_gpu_despite_a_default_bucket(make_bridge, double):
    # S3_BUCKET_NAME is set, but this request asked for base64: nobody is left to get them.
    bridge = await make_bridge(double.url, double.root, s3={"bucket_name": "default-outputs"})
    double.hang_next_prompt()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(bridge.url + "/generate/sync", json={
            "input": {"workflow_json": save_graph(), "return_outputs_as_base64": True}}))
        await _until(lambda: double.queue.running)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    try:
        await _until(lambda: bool(double.requests_to("/interrupt", "POST")))
    finally:
        double.release()
    await _until(lambda: bridge.runner.prompts_inflight == 0)


async def test_health_and_ready(bridge, double):
    async with bridge.session.get(bridge.url + "/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with bridge.session.get(bridge.url + "/ready") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"
    await double.stop()
    async with bridge.session.get(bridge.url + "/ready") as r:
        body = await r.json()
        assert r.status == 503 and body["status"] == "not_ready" and body["error"]["retriable"] is True
    async with bridge.session.get(bridge.url + "/health") as r:
        assert r.status == 200
    await double.start()
    async with bridge.session.get(bridge.url + "/ready") as r:
        assert r.status == 200
    status, _ = await bridge.generate(save_graph())
    assert status == 200


async def test_reconcile_completes_prompt_whose_events_were_missed(double, monkeypatch):
    client = ComfyClient(double.url)
    await client.start()
    try:
        double.hang_next_prompt()
        await client.submit(save_graph(prefix="cvw/x/missed"), "p-missed")
        await _until(lambda: double.queue.running)
        monkeypatch.setattr(client, "_dispatch", lambda event: None)  # every event is lost
        double.release()
        await double.wait_idle()
        await _until(lambda: "p-missed" in double.history_ids())
        assert not client.tracker("p-missed").future.done()
        await client._reconcile()
        await client._reconcile()  # a second pass must not complete it again
        result = await client.wait("p-missed")
        assert result.failure is None
        assert result.outputs["2"]["images"][0]["filename"].endswith(".png")
        assert result.execution_ms >= 0
    finally:
        await client.close()


async def test_reader_survives_odd_frames_and_reports_progress(make_comfy_double):
    from tests.bridge.test_errors import SD_GRAPH

    double = await make_comfy_double(models={"checkpoints": ["m.safetensors"]})
    client = ComfyClient(double.url)
    await client.start()
    try:
        for raw in (aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, b"\x00", None),
                    aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, b"\x00\x00\x00\x01\x00", None),
                    aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, "{not json", None),
                    aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, '{"type": "executing", "data": 5}', None)):
            client._handle(raw)
        seen: list[str] = []

        def on_progress(event) -> None:
            seen.append(event.type)
            raise RuntimeError("a broken callback must not break the reader")

        graph = {k: dict(v, inputs=dict(v["inputs"])) for k, v in SD_GRAPH.items()}
        graph["4"]["inputs"]["ckpt_name"] = "m.safetensors"
        graph["9"]["inputs"]["filename_prefix"] = "cvw/x/progress"
        await client.submit(graph, "p-progress", on_progress=on_progress)
        result = await client.wait("p-progress")
        assert result.failure is None
        assert "progress" in seen and "execution_start" in seen
    finally:
        await client.close()


class FakeSupervisor:
    """The duck-typed surface build_app uses: check_available, add_listener, mark_fatal."""

    def __init__(self) -> None:
        self.state = "ready"
        self.listeners: list = []
        self.fatal: list[str] = []

    def check_available(self) -> None:
        if self.state != "ready":
            raise ComfyUnavailable(f"ComfyUI is {self.state}; retry shortly", state=self.state)

    def add_listener(self, cb) -> None:
        self.listeners.append(cb)

    def mark_fatal(self, reason: str) -> None:
        self.fatal.append(reason)


async def test_supervisor_states_reach_requests(double, make_bridge):
    sup = FakeSupervisor()
    bridge = await make_bridge(double.url, double.root, supervisor=sup)

    sup.state = "restarting"
    status, body = await bridge.generate(save_graph())
    assert status == 503 and body["error"]["retriable"] is True and "restarting" in body["error"]["message"]
    async with bridge.session.get(bridge.url + "/ready") as r:
        assert r.status == 503
    assert not double.requests_to("/prompt", "POST")

    sup.state = "ready"
    double.hang_next_prompt()
    pending = asyncio.ensure_future(bridge.generate(save_graph()))
    await _until(lambda: double.queue.running)
    for cb in sup.listeners:
        cb("restarting", "ComfyUI exited with -9")
    status, body = await pending
    assert status == 503 and "went down" in body["error"]["message"]
    double.release()

    double.fail_next_prompt("RuntimeError", "CUDA error: device-side assert triggered")
    status, body = await bridge.generate(save_graph())
    assert status == 500 and body["error"]["fatal"] is True
    await bridge.runner.drain()
    assert sup.fatal and "device-side assert" in sup.fatal[0]
