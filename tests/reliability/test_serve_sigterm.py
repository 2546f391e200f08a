"""`comfy-worker serve` on SIGTERM (how Vast stops a worker): new requests get a
retriable 503 `shutting_down` JSON through the PyWorker, the request in flight finishes,
so does one whose caller left but whose webhook still wants the result, then ComfyUI is
stopped and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from tests.reliability.faults.helpers import eventually
from tests.reliability.faults.stack import Stack, start_stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path / "stack", env={"COMFY_BRIDGE_SHUTDOWN_GRACE_S": "30"})
    yield s
    s.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_serve_drains_on_sigterm_and_stops_comfyui(stack: Stack):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        posted = (await stack.state(session))["prompts_posted"]
        await stack.fault(session, "hang_next_prompt")
        running = asyncio.ensure_future(stack.call(session, stack.job()))

        async def started() -> bool:
            st = await stack.state(session)
            return st["prompts_posted"] > posted and st["queue_remaining"] >= 1

        await eventually(started, what="the prompt to run")
        comfy_pid = stack.comfy_pid()
        os.kill(stack.worker.pid, signal.SIGTERM)

        async def draining() -> bool:
            return "shutting down" in stack.log_tail(100_000)

        await eventually(draining, what="the drain to begin")
        status, body = await stack.call(session, stack.job())
        assert status == 503, body
        assert body["error"]["type"] == "shutting_down" and body["error"]["retriable"] is True
        assert _alive(comfy_pid)  # ComfyUI keeps running for the request in flight

        await stack.fault(session, "release")
        status, body = await running
        assert status == 200, body

    rc = await asyncio.to_thread(stack.worker.wait, 30)
    assert rc == 0, stack.log_tail()
    assert not _alive(comfy_pid)
    log = stack.log_tail(100_000)
    assert "drained" in log and "shutdown complete" in log


async def test_serve_finishes_a_left_callers_webhook_before_stopping_comfyui(stack: Stack, receiver):
    url, got, arrived = receiver
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        posted = (await stack.state(session))["prompts_posted"]
        await stack.fault(session, "hang_next_prompt")
        left = asyncio.ensure_future(stack.call(session, stack.job(webhook={"url": url}, request_id="gone")))

        async def started() -> bool:
            st = await stack.state(session)
            return st["prompts_posted"] > posted and st["queue_remaining"] >= 1

        await eventually(started, what="the prompt to run")
        left.cancel()  # the caller goes away; its webhook still wants the result
        await asyncio.gather(left, return_exceptions=True)
        await eventually(lambda: _async("caller left" in stack.log_tail(100_000)), what="the bridge to see it")
        comfy_pid = stack.comfy_pid()
        os.kill(stack.worker.pid, signal.SIGTERM)
        await eventually(lambda: _async("shutting down" in stack.log_tail(100_000)), what="the drain to begin")
        assert _alive(comfy_pid)  # kept running for the request nobody waits on
        await stack.fault(session, "release")
        await asyncio.wait_for(arrived.wait(), 20)

    assert got[0]["id"] == "gone" and got[0]["status"] == "success", got[0]
    rc = await asyncio.to_thread(stack.worker.wait, 30)
    assert rc == 0, stack.log_tail()
    assert not _alive(comfy_pid)


async def _async(value: bool) -> bool:
    return value
