"""Faults the worker survives, injected one after another into one running stack (see
stack.py): each test checks the caller's answer, that the autoscaler was told nothing
(a restart or a failed request is not a reason to replace the machine), and that the
next request succeeds, which is also what leaves the stack clean for the next test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.io.seaweed import REGION, Seaweed, WeedUnavailable, start_seaweed
from tests.reliability.faults.helpers import describe, eventually
from tests.reliability.faults.stack import Stack, free_port
from tests.support import service_missing, silent_graph

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def _running(stack: Stack, session: aiohttp.ClientSession, posted_before: int) -> bool:
    st = await stack.state(session)
    return st["prompts_posted"] > posted_before and st["queue_remaining"] >= 1


async def _start_hung_call(stack: Stack, session: aiohttp.ClientSession, fault: str = "hang_next_prompt",
                           **job: Any) -> asyncio.Future[tuple[int, Any]]:
    """A request whose prompt is running (and hung) in ComfyUI when this returns."""
    posted = (await stack.state(session))["prompts_posted"]
    await stack.fault(session, fault)
    call = asyncio.ensure_future(stack.call(session, stack.job(**job)))
    await eventually(lambda: _running(stack, session, posted), what="the prompt to run")
    return call


async def _settle(stack: Stack, session: aiohttp.ClientSession, since: int) -> tuple[bool, str]:
    ok = await stack.next_ok(session)
    return ok, await stack.told_since(session, since)


async def test_comfyui_killed_mid_prompt(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    call = await _start_hung_call(stack, session)
    pid = stack.comfy_pid()
    os.kill(pid, signal.SIGKILL)
    status, body = await call
    assert status == 503, body
    assert body["error"]["retriable"] is True and body["error"]["type"] == "comfyui_unavailable"
    ok, told = await _settle(stack, session, since)
    assert ok and stack.comfy_pid() != pid  # served by the restarted ComfyUI
    assert told == "nothing"
    record_fault("killed", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="the supervisor restarts ComfyUI (backoff 1 s)")


async def test_hung_prompt_hits_the_deadline(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    before = await stack.state(session)
    call = await _start_hung_call(stack, session, timeout_s=0.5)
    status, body = await call
    assert status == 504, body
    assert body["error"]["type"] == "timeout" and body["error"]["retriable"] is True
    assert "interrupted" in body["error"]["message"]
    assert (await stack.state(session))["interrupts"] > before["interrupts"]
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("hung_deadline", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="prompt interrupted")


async def test_slow_silent_node_is_not_killed(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    pid = stack.comfy_pid()
    status, body = await stack.call(session, stack.job(workflow_json=silent_graph(4.0, color=stack.next_color())))
    assert status == 200, body
    assert len(body["output"]) == 1
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    assert stack.comfy_pid() == pid  # ComfyUI answered its probes: never restarted
    record_fault("slow_silent", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="ComfyUI answered the watchdog's probes: left to run, no restart")


async def test_silent_prompt_is_left_to_its_deadline(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    pid = stack.comfy_pid()
    call = await _start_hung_call(stack, session, timeout_s=3)
    status, body = await call
    assert status == 504, body
    assert body["error"]["retriable"] is True and "interrupted" in body["error"]["message"]
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    assert stack.comfy_pid() == pid  # it answered its API: no restart, no crash counted
    record_fault("hung_silent", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="not hung while it answers: interrupted at the deadline, no restart")


async def test_frozen_comfyui_is_restarted_by_the_watchdog(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    pid = stack.comfy_pid()
    call = await _start_hung_call(stack, session, fault="freeze_next_prompt")
    status, body = await call
    assert status == 503, body
    assert body["error"]["retriable"] is True and body["error"].get("watchdog") is True
    assert "restarted" in body["error"]["message"]
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    assert stack.comfy_pid() != pid
    record_fault("hung_process", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="unresponsive: ComfyUI restarted")


async def test_websocket_closed_mid_prompt_completes_once(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    before = await stack.state(session)
    await stack.fault(session, "close_websockets_mid_prompt")
    status, body = await stack.call(session, stack.job())
    assert status == 200, body
    assert len(body["output"]) == 1
    after = await stack.state(session)
    assert after["prompts_finished"] == before["prompts_finished"] + 1
    assert after["prompts_posted"] == before["prompts_posted"] + 1  # never resubmitted
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("ws_closed", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="reconnected and reconciled; completed once")


async def test_slow_history(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    await stack.fault(session, "slow_history", seconds=1.5)
    try:
        status, body = await stack.call(session, stack.job())
    finally:
        await stack.fault(session, "slow_history", seconds=0.0)
    assert status == 200, body
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("history_slow", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok)


def _seaweed_in_thread(workdir: Path, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out["weed"] = start_seaweed(workdir)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _s3(weed: Seaweed, bucket: str) -> dict[str, str]:
    return {"endpoint_url": weed.endpoint, "bucket_name": bucket, "region": REGION,
            "access_key_id": weed.access_key, "secret_access_key": weed.secret_key}


async def test_s3_down(stack: Stack, session, record_fault, tmp_path: Path):
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    threads = [_seaweed_in_thread(tmp_path / "a", first), _seaweed_in_thread(tmp_path / "b", second)]
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    for out in (first, second):
        if isinstance(out.get("error"), WeedUnavailable):
            service_missing(str(out["error"]))
        assert "weed" in out, out.get("error")
    down, back = first["weed"], second["weed"]
    try:
        s3_down = _s3(down, down.bucket("outputs"))
        down.stop()  # S3 goes away before the outputs are delivered
        since = len(await stack.reports(session))
        status, body = await stack.call(session, stack.job(s3=s3_down))
        assert status == 502, body
        assert body["error"]["type"] == "delivery_failed" and body["error"]["retriable"] is True
        [out] = body["output"]
        assert out["data"] and out["upload_error"]  # the image came back inline anyway
        assert down.secret_key not in json.dumps(body)
        # S3 is back (another server): the same kind of request is delivered.
        next_status, next_body = await stack.call(session, stack.job(s3=_s3(back, back.bucket("outputs"))))
        ok = next_status == 200 and bool(next_body["output"][0].get("s3_key"))
        told = await stack.told_since(session, since)
        assert ok and told == "nothing"
    finally:
        down.stop()
        back.stop()
    record_fault("s3_down", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="outputs returned inline and kept on the spool")


async def test_webhook_down(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    dead = f"http://127.0.0.1:{free_port()}/hook"
    status, body = await stack.call(session, stack.job(webhook={"url": dead, "secret": "whsec-down-Qx81"}))
    assert status == 200, body
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("webhook_down", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="webhook retried in the background, response not delayed")


async def _leave(call: asyncio.Future[Any]) -> None:
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


async def test_client_disconnect_interrupts_the_prompt(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    before = await stack.state(session)
    call = await _start_hung_call(stack, session)
    await _leave(call)
    await eventually(lambda: _interrupted(stack, session, before["interrupts"]), what="the interrupt")
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("disconnect", level="worker", status="- (caller left)", body="prompt interrupted, GPU freed",
                 autoscaler=told, next_ok=ok)


async def _interrupted(stack: Stack, session: aiohttp.ClientSession, before: int) -> bool:
    return (await stack.state(session))["interrupts"] > before


async def test_client_disconnect_with_webhook_delivers(stack: Stack, session, record_fault, receiver):
    url, got, arrived = receiver
    since = len(await stack.reports(session))
    before = await stack.state(session)
    call = await _start_hung_call(stack, session, webhook={"url": url}, request_id="left-with-webhook")
    await _leave(call)
    await stack.fault(session, "release")
    await asyncio.wait_for(arrived.wait(), 20)
    assert got[0]["status"] == "success" and got[0]["id"] == "left-with-webhook"
    assert (await stack.state(session))["interrupts"] == before["interrupts"]
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("disconnect_webhook", level="worker", status="- (caller left)",
                 body="finished; result delivered to the webhook", autoscaler=told, next_ok=ok)


async def test_comfyui_cannot_write_its_output(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    await stack.fault(session, "fail_next_prompt", exception_type="OSError",
                      message="[Errno 28] No space left on device", class_type="SaveImage")
    status, body = await stack.call(session, stack.job())
    assert status == 500, body
    assert body["error"]["type"] == "execution_error" and body["error"]["retriable"] is False
    assert "No space left" in body["error"]["message"] and body["error"]["node_type"] == "SaveImage"
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("disk_full_comfy", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="node, type and message named")


async def test_out_of_memory_once_is_retried(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    before = await stack.state(session)
    await stack.fault(session, "fail_next_prompt", exception_type="torch.OutOfMemoryError",
                      message="Allocation on device")
    status, body = await stack.call(session, stack.job())
    assert status == 200, body
    assert (await stack.state(session))["frees"] == before["frees"] + 1
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("oom_once", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="POST /free, then one retry")


async def test_out_of_memory_twice_is_a_500(stack: Stack, session, record_fault):
    since = len(await stack.reports(session))
    before = await stack.state(session)
    for _ in range(2):
        await stack.fault(session, "fail_next_prompt", exception_type="torch.OutOfMemoryError",
                          message="Allocation on device")
    status, body = await stack.call(session, stack.job())
    assert status == 500, body
    assert body["error"]["type"] == "out_of_memory" and "out of GPU memory" in body["error"]["message"]
    assert (await stack.state(session))["frees"] == before["frees"] + 1
    ok, told = await _settle(stack, session, since)
    assert ok and told == "nothing"
    record_fault("oom_twice", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok, note="one /free + retry, then the 500 says so")
