"""Runs that share a request_id (issue 10 item 3): a resend joins, another payload gets 409."""

from __future__ import annotations

import asyncio
import base64
import io

from PIL import Image

from tests.support import save_graph


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def _pixel(entry: dict) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(base64.b64decode(entry["data"]))).convert("RGB").getpixel((0, 0))


async def test_resend_in_flight_joins_the_run(bridge, double):
    double.hang_next_prompt()
    first = asyncio.ensure_future(bridge.generate(save_graph(color=0xFF0000), request_id="again", timeout_s=30))
    await _until(lambda: double.queue.running)
    # A client that lost its connection resends: the remaining deadline differs, nothing else.
    second = asyncio.ensure_future(bridge.generate(save_graph(color=0xFF0000), request_id="again", timeout_s=20))
    await _until(lambda: bridge.runner.active == 2)
    double.release()
    (s1, b1), (s2, b2) = await asyncio.gather(first, second)
    assert s1 == s2 == 200, (b1, b2)
    assert b1["prompt_id"] == b2["prompt_id"]
    assert len(double.requests_to("/prompt", "POST")) == 1  # one GPU run for both callers
    assert _pixel(b1["output"][0]) == _pixel(b2["output"][0]) == (255, 0, 0)


async def test_other_payload_under_an_in_flight_request_id_gets_409(bridge, double):
    double.hang_next_prompt()
    first = asyncio.ensure_future(bridge.generate(save_graph(color=0xFF0000), request_id="taken", timeout_s=30))
    await _until(lambda: double.queue.running)
    status, body = await bridge.generate(save_graph(color=0x0000FF), request_id="taken")
    assert status == 409, body
    assert body["id"] == "taken" and body["error"]["type"] == "request_id_in_use"
    assert body["error"]["retriable"] is False and "'taken'" in body["error"]["message"]
    assert "output" not in body
    double.release()
    s1, b1 = await first
    assert s1 == 200 and _pixel(b1["output"][0]) == (255, 0, 0)
    # Once the first run ended, the request_id is free again: a new run, its own files.
    s3, b3 = await bridge.generate(save_graph(color=0x0000FF), request_id="taken")
    assert s3 == 200 and _pixel(b3["output"][0]) == (0, 0, 255)
    assert b3["prompt_id"] != b1["prompt_id"]


async def test_a_caller_leaving_does_not_stop_the_run_another_waits_for(bridge, double):
    double.hang_next_prompt()
    first = asyncio.ensure_future(bridge.generate(save_graph(color=0x00FF00), request_id="stay"))
    await _until(lambda: double.queue.running)
    second = asyncio.ensure_future(bridge.generate(save_graph(color=0x00FF00), request_id="stay"))
    await _until(lambda: bridge.runner.active == 2)
    first.cancel()  # the first caller's connection closes
    await _until(lambda: bridge.runner.active == 1)
    double.release()
    status, body = await second
    assert status == 200 and _pixel(body["output"][0]) == (0, 255, 0)
    assert not double.requests_to("/interrupt", "POST")


async def test_inline_filenames_carry_the_request_id(bridge):
    status, body = await bridge.generate(save_graph(), request_id="order-7")
    assert status == 200, body
    [out] = body["output"]
    assert out["filename"].startswith("order-7_") and out["filename"].endswith(".png")
