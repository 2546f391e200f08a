"""The reliability pieces wired into the bridge: GET /metrics counts requests by outcome
with their timings, queue depth and ComfyUI restarts; every request ends with one JSON
log line carrying request_id, prompt_id and timings; the execution-silence watchdog;
and `comfy-worker bridge` draining on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from comfy_bridge.errors import ComfyUnavailable
from comfy_bridge.observability import Metrics
from tests.comfy_double import ComfyDouble
from tests.support import free_port, json_logs, save_graph, silent_graph

pytestmark = pytest.mark.timeout(60)


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


class Supervisor:
    """What build_app uses of a ComfySupervisor, with restart() recorded."""

    def __init__(self) -> None:
        self.state = "ready"
        self.listeners: list[Any] = []
        self.restarts: list[str] = []

    def check_available(self) -> None:
        if self.state != "ready":
            raise ComfyUnavailable(f"ComfyUI is {self.state}")

    def add_listener(self, cb: Any) -> None:
        self.listeners.append(cb)

    def mark_fatal(self, reason: str) -> None:
        self.set("failed", reason)

    async def restart(self, reason: str) -> None:
        self.restarts.append(reason)

    def set(self, state: str, reason: str = "") -> None:
        self.state = state
        for cb in self.listeners:
            cb(state, reason)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged, as the JSON lines the worker writes."""
    with json_logs(logging.INFO) as stream:
        yield stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def _metrics(bridge) -> str:
    async with bridge.session.get(bridge.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_count_outcomes_and_timings(make_bridge, comfy_double: ComfyDouble):
    metrics = Metrics()
    sup = Supervisor()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, metrics=metrics, supervisor=sup)
    assert (await bridge.generate(save_graph()))[0] == 200
    assert (await bridge.post({"input": {}}))[0] == 422
    comfy_double.hang_next_prompt()
    assert (await bridge.generate(save_graph(color=3), timeout_s=0.3))[0] == 504
    sup.set("restarting", "ComfyUI exited with code -9")
    assert (await bridge.generate(save_graph(color=4)))[0] == 503
    sup.set("ready")

    text = await _metrics(bridge)
    assert 'comfy_bridge_requests_total{outcome="success"} 1.0' in text
    assert 'comfy_bridge_requests_total{outcome="bad_request"} 1.0' in text
    assert 'comfy_bridge_requests_total{outcome="timeout"} 1.0' in text
    assert 'comfy_bridge_requests_total{outcome="unavailable"} 1.0' in text
    assert metrics.value("comfy_bridge_execution_seconds_count") == 1
    assert metrics.value("comfy_bridge_delivery_seconds_count") == 1
    assert metrics.value("comfy_bridge_total_seconds_count") == 4
    assert metrics.value("comfy_bridge_comfyui_restarts_total") == 1
    assert metrics.value("comfy_bridge_comfyui_state", comfy_bridge_comfyui_state="ready") == 1
    assert "comfy_bridge_comfy_queue_depth 0.0" in text
    assert metrics.value("comfy_bridge_inflight_requests") == 0


async def test_queue_depth_follows_comfyui(make_bridge, comfy_double: ComfyDouble):
    metrics = Metrics()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, metrics=metrics)
    comfy_double.hang_next_prompt()
    calls = [asyncio.ensure_future(bridge.generate(save_graph(color=c))) for c in (1, 2, 3)]
    await _until(lambda: comfy_double.queue.remaining() == 3)
    await _until(lambda: metrics.value("comfy_bridge_comfy_queue_depth") == 3)
    assert metrics.value("comfy_bridge_inflight_requests") == 3
    comfy_double.release()
    assert [s for s, _ in await asyncio.gather(*calls)] == [200, 200, 200]
    await _until(lambda: metrics.value("comfy_bridge_comfy_queue_depth") == 0)


async def test_completion_log_line(make_bridge, comfy_double: ComfyDouble, captured_logs):
    bridge = await make_bridge(comfy_double.url, comfy_double.root, metrics=Metrics())
    status, body = await bridge.generate(save_graph(), request_id="log-me")
    assert status == 200
    comfy_double.fail_next_prompt("ValueError", "bad value", class_type="SaveImage")
    status, failed = await bridge.generate(save_graph(color=7), request_id="log-me-too")
    assert status == 500

    done = [e for e in _lines(captured_logs) if e["msg"].startswith("request finished")]
    ok = next(e for e in done if e["request_id"] == "log-me")
    assert ok["prompt_id"] == body["prompt_id"] and ok["outcome"] == "success" and ok["status"] == 200
    assert set(ok["timings"]) == {"queued_ms", "inputs_ms", "execution_ms", "outputs_ms", "total_ms"}
    bad = next(e for e in done if e["request_id"] == "log-me-too")
    assert bad["prompt_id"] == failed["prompt_id"] and bad["outcome"] == "execution_error"
    assert bad["status"] == 500 and bad["timings"]["total_ms"] > 0 and bad["level"] == "warning"


async def test_slow_silent_node_is_left_to_finish(make_bridge, comfy_double: ComfyDouble):
    # A node silent for 5x the watchdog limit, in a ComfyUI that answers: slow, not hung.
    sup = Supervisor()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3,
                               supervisor=sup, metrics=Metrics())
    status, body = await bridge.generate(silent_graph(1.5))
    assert status == 200, body
    assert len(body["output"]) == 1
    assert not comfy_double.requests_to("/interrupt", "POST")
    assert comfy_double.requests_to("/system_stats")  # it was probed, and answered
    await bridge.runner.drain()
    assert sup.restarts == [] and bridge.runner.watchdog.trips == 0
    assert bridge.runner.watchdog.slow >= 1


async def test_one_failed_probe_is_not_a_hang(make_bridge, comfy_double: ComfyDouble):
    sup = Supervisor()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3,
                               supervisor=sup, metrics=Metrics())
    probed = len(comfy_double.requests_to("/system_stats"))
    comfy_double.fail_http("/system_stats", 500)
    call = asyncio.ensure_future(bridge.generate(silent_graph(2.0, color=3)))
    await _until(lambda: len(comfy_double.requests_to("/system_stats")) > probed)
    comfy_double.fail_http("/system_stats", None)  # answers again by the next probe
    status, body = await call
    assert status == 200, body
    await bridge.runner.drain()
    assert sup.restarts == [] and bridge.runner.watchdog.trips == 0


async def test_silent_hung_prompt_is_left_to_its_deadline(make_bridge, comfy_double: ComfyDouble):
    sup = Supervisor()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3,
                               supervisor=sup, metrics=Metrics())
    comfy_double.hang_next_prompt()
    status, body = await bridge.generate(save_graph(), timeout_s=1.5)
    assert status == 504, body
    assert body["error"]["retriable"] is True and "interrupted" in body["error"]["message"]
    assert comfy_double.requests_to("/interrupt", "POST")
    await bridge.runner.drain()
    assert sup.restarts == []  # ComfyUI answered all along: nothing to restart
    assert bridge.runner.prompts_inflight == 0
    assert (await bridge.generate(save_graph(color=2)))[0] == 200


async def test_watchdog_restarts_an_unresponsive_comfyui(make_bridge, comfy_double: ComfyDouble):
    sup = Supervisor()
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3,
                               supervisor=sup, metrics=Metrics())
    comfy_double.hang_next_prompt()
    call = asyncio.ensure_future(bridge.generate(save_graph()))
    await _until(lambda: comfy_double.queue.running)
    comfy_double.fail_http("/system_stats", 500)  # ComfyUI stops answering its probes
    status, body = await call
    assert status == 503 and body["error"]["watchdog"] is True, body
    assert "restarted" in body["error"]["message"]
    await bridge.runner.drain()
    assert len(sup.restarts) == 1 and "watchdog" in sup.restarts[0]
    comfy_double.fail_http("/system_stats", None)
    comfy_double.release()


async def test_watchdog_settles_a_prompt_whose_end_was_missed(make_bridge, comfy_double: ComfyDouble, monkeypatch):
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3, metrics=Metrics())
    client = bridge.runner.client
    comfy_double.hang_next_prompt()
    call = asyncio.ensure_future(bridge.generate(save_graph()))
    await _until(lambda: comfy_double.queue.running)
    monkeypatch.setattr(client, "_dispatch", lambda event: None)  # its end never arrives
    comfy_double.release()
    status, body = await call
    assert status == 200, body  # the watchdog found it in /history instead of failing it


async def test_waiting_behind_others_is_not_silence(make_bridge, comfy_double: ComfyDouble):
    bridge = await make_bridge(comfy_double.url, comfy_double.root, watchdog_silence_s=0.3, metrics=Metrics())
    comfy_double.hang_next_prompt()
    first = asyncio.ensure_future(bridge.generate(save_graph(color=1), timeout_s=1.5))
    await _until(lambda: comfy_double.queue.running)
    second = asyncio.ensure_future(bridge.generate(save_graph(color=2)))
    status, body = await first  # the running one is stuck: interrupted at its deadline
    assert status == 504, body
    status, body = await second  # the pending one was never silent: it ran
    assert status == 200, body


# ---- `comfy-worker bridge` on SIGTERM ------------------------------------------------------


async def test_bridge_cli_drains_on_sigterm(comfy_double: ComfyDouble, tmp_path: Path):
    port = free_port()
    exe = Path(sys.executable).parent / "comfy-worker"
    proc = await asyncio.create_subprocess_exec(
        str(exe), "bridge", "--comfyui-url", comfy_double.url, "--comfyui-path", str(comfy_double.root),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "INFO",
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    seen: list[str] = []

    async def log_line(fragment: str) -> None:
        assert proc.stderr is not None
        while not any(fragment in line for line in seen):
            raw = await proc.stderr.readline()
            assert raw, f"bridge exited before logging {fragment!r}: {seen}"
            seen.append(raw.decode())

    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(log_line('"msg": "listening on'), 30)
            comfy_double.hang_next_prompt()

            async def generate(color: int) -> tuple[int, dict[str, Any]]:
                body = {"input": {"workflow_json": save_graph(color=color)}}
                async with session.post(url + "/generate/sync", json=body) as r:
                    return r.status, await r.json()

            running = asyncio.ensure_future(generate(1))
            await _until(lambda: comfy_double.queue.running)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(log_line("shutting down"), 10)
            status, body = await generate(2)  # new work is refused once shutdown has begun
            assert status == 503 and body["error"]["type"] == "shutting_down"
            assert body["error"]["retriable"] is True
            async with session.get(url + "/metrics") as r:  # still observable while draining
                assert r.status == 200
            comfy_double.release()
            status, body = await running
            assert status == 200, body
        await asyncio.wait_for(log_line("shutdown complete"), 20)
        rc = await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0
    assert any("drained" in line for line in seen)


async def test_failed_webhooks_are_counted(make_bridge, comfy_double: ComfyDouble):
    from comfy_bridge.observability import METRICS

    bridge = await make_bridge(comfy_double.url, comfy_double.root, webhook_retries=0, allow_private_urls=True,
                               metrics=Metrics())
    before = METRICS.value("comfy_bridge_webhook_failures_total")
    status, _ = await bridge.generate(save_graph(), webhook={"url": f"http://127.0.0.1:{free_port()}/hook"})
    assert status == 200
    await bridge.runner.drain()
    await bridge.runner.webhooks.aclose()
    assert METRICS.value("comfy_bridge_webhook_failures_total") == before + 1
