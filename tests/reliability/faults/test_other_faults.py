"""Faults that need the ComfyUI double in this process: a ComfyUI the worker does not
supervise (--comfyui-url) restarting under it, and a disk that fills while the bridge
writes outputs (a hook inside the bridge)."""

from __future__ import annotations

import asyncio
import errno
import json
from typing import Any

import aiohttp
import pytest

from comfy_bridge.delivery.base import Artifact
from comfy_bridge.schemas.job import JobInput, OutputFile
from comfy_bridge.settings import BridgeSettings
from tests.support import save_graph
from tests.comfy_double import ComfyDouble
from tests.reliability.faults.helpers import describe, eventually
from tests.worker.conftest import double, emulator, start_worker  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


async def test_external_comfyui_restarts_mid_prompt(start_worker, double: ComfyDouble, record_fault):  # noqa: F811
    worker = await start_worker(double)
    await worker.wait_ready()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        double.hang_next_prompt()
        call = asyncio.ensure_future(worker.post(worker.signed({"workflow_json": save_graph(color=3)}),
                                                 session=session))

        async def running() -> bool:
            return bool(double.queue and double.queue.running)

        await eventually(running, what="the prompt to run")
        await double.stop(forget=True)  # the process died: queue and history are gone
        await double.start()
        status, raw = await call
        body = json.loads(raw)
        assert status == 503, body
        assert body["error"]["retriable"] is True and "lost the prompt" in body["error"]["message"]
        status2, raw2 = await worker.post(worker.signed({"workflow_json": save_graph(color=4)}), session=session)
        ok = status2 == 200
    told = next((r["error_msg"] for r in worker.emulator.reports if r.get("error_msg")), "") or "nothing"
    assert ok and told == "nothing", raw2
    record_fault("external_restart", level="worker", status=str(status), body=describe(status, body)[1],
                 autoscaler=told, next_ok=ok,
                 note="websocket reconnected; /queue and /history reconciled: prompt lost")


class _FullDisk:
    """A destination whose writes fail as on a full disk (conversion, spooling...)."""

    name = "full-disk"

    async def deliver(self, job: JobInput, artifacts: list[Artifact]) -> list[OutputFile]:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_bridge_cannot_write_outputs(make_bridge, comfy_double: ComfyDouble, record_fault):  # noqa: F811
    full = {"on": True}

    def picker(job: JobInput, settings: BridgeSettings) -> Any:
        from comfy_bridge.delivery.choice import pick

        return _FullDisk() if full["on"] else pick(job, settings)

    bridge = await make_bridge(comfy_double.url, comfy_double.root, destinations=picker)
    status, body = await bridge.generate(save_graph(color=9), request_id="disk-full")
    assert status == 502, body
    assert body["error"]["type"] == "delivery_failed" and "No space left" in body["error"]["message"]
    [out] = body["output"]
    # The image is still in ComfyUI's output folder, where the response says it was kept.
    assert list(comfy_double.output_dir.rglob(out["filename"]))
    full["on"] = False
    status2, _ = await bridge.generate(save_graph(color=10))
    ok = status2 == 200
    assert ok
    record_fault("disk_full_bridge", level="bridge", status=str(status), body=describe(status, body)[1],
                 autoscaler="n/a (bridge level)", next_ok=ok, note="outputs kept in ComfyUI's output folder")
