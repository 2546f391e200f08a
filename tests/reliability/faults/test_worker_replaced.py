"""Faults after which the worker must ask to be replaced: each gets a stack of its own,
since the worker's `error_msg` to the autoscaler is final."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.reliability.faults.helpers import describe, eventually, first_line
from tests.reliability.faults.stack import Stack, start_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path / "stack")
    yield s
    s.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def test_cuda_fatal_error_replaces_the_worker(own_stack: Stack, session, record_fault):
    stack = own_stack
    await stack.fault(session, "fail_next_prompt", exception_type="RuntimeError",
                      message="CUDA error: an illegal memory access was encountered", class_type="SaveImage")
    status, body = await stack.call(session, stack.job())
    assert status == 500, body
    assert body["error"]["fatal"] is True and body["error"]["retriable"] is True  # elsewhere it works
    told = await stack.wait_error_msg(session)
    assert "illegal memory access" in told
    # The router stops sending it work; this worker refuses what still reaches it.
    assert await stack.route(session) is None
    ok = await stack.next_ok(session, within_s=1.0)
    assert not ok
    record_fault("cuda_fatal", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=first_line(told), next_ok=ok,
                 note="fatal=true; the next request goes to another worker")


async def test_crash_loop_replaces_the_worker(own_stack: Stack, session, record_fault):
    stack = own_stack
    posted = (await stack.state(session))["prompts_posted"]
    await stack.fault(session, "hang_next_prompt")
    call = asyncio.ensure_future(stack.call(session, stack.job()))

    async def running() -> bool:
        st = await stack.state(session)
        return st["prompts_posted"] > posted and st["queue_remaining"] >= 1

    await eventually(running, what="the prompt to run")
    (stack.root / "crash").write_text("")  # from now on ComfyUI dies as it starts
    os.kill(stack.comfy_pid(), signal.SIGKILL)
    status, body = await call
    assert status == 503 and body["error"]["retriable"] is True, body
    told = await stack.wait_error_msg(session)
    assert "crashed 3 times" in told
    assert await stack.route(session) is None
    ok = await stack.next_ok(session, within_s=1.0)
    assert not ok
    record_fault("crash_loop", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=first_line(told), next_ok=ok,
                 note="in-flight request failed fast; restarts with backoff until the limit")
