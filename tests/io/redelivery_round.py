"""The S3 outage round of issue 10 item 5, shared by tests/io/test_redelivery.py and the
fault table (tests/reliability/faults/test_run_faults.py): S3 down, 502 with inline
copies, S3 up, object appears, the webhook says so, nothing left on disk."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from comfy_bridge.settings import S3Settings
from tests.comfy_double import ComfyDouble
from tests.io.outage import Outage
from tests.io.seaweed import REGION, Seaweed
from tests.support import save_graph, serve_app


@dataclass
class Round:
    status: int   # what the caller got during the outage
    body: dict    # its answer
    told: dict    # the webhook sent once the output was stored


async def s3_outage_round(weed: Seaweed, double: ComfyDouble, make_bridge: Callable[..., Awaitable[Any]],
                          tmp_path: Path) -> Round:
    bucket = weed.bucket("outputs")
    s3_link = Outage("127.0.0.1", int(weed.endpoint.rsplit(":", 1)[1]))
    await s3_link.up()
    hooks: asyncio.Queue[dict] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await hooks.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runners: list[web.AppRunner] = []
    hook_url = f"http://127.0.0.1:{await serve_app(app, runners)}/hook"
    spool = tmp_path / "spool"
    s3 = S3Settings(endpoint_url=s3_link.url, bucket_name=bucket, region=REGION, prefix="out",
                    access_key_id=weed.access_key, secret_access_key=weed.secret_key,
                    retries=1, retry_backoff_s=0.05)
    bridge = await make_bridge(double.url, double.root, s3=s3, spool_dir=spool, allow_private_urls=True,
                               redeliver_max_backoff_s=0.2, webhook_retry_backoff_s=0.05)
    try:
        await s3_link.down()  # the outage
        status, body = await bridge.generate(save_graph(color=0x123456), request_id="outage",
                                             webhook={"url": hook_url})
        assert status == 502 and body["error"]["retriable"] is True, body
        [out] = body["output"]
        made = base64.b64decode(out["data"])  # the inline copy
        assert out["upload_error"] and out["spool_key"].startswith("outage/")
        assert (await asyncio.wait_for(hooks.get(), 10))["status"] == "failed"

        # Meanwhile the file can be fetched from the bridge's loopback API.
        async with bridge.session.get(f"{bridge.url}/outputs/{out['spool_key']}") as resp:
            assert resp.status == 200 and await resp.read() == made
        await bridge.runner.drain()
        assert not [p for p in double.output_dir.rglob("*") if p.is_file()]  # ComfyUI's folder: empty

        await s3_link.up()  # S3 is back
        told = await asyncio.wait_for(hooks.get(), 30)
        assert told["id"] == "outage" and told["status"] == "success" and told["event"] == "redelivered"
        [stored] = told["output"]
        key = stored["s3_key"]
        assert key.startswith("out/outage/") and key.endswith(out["filename"]) and "data" not in stored
        assert weed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == made
        async with bridge.session.get(stored["url"]) as resp:
            assert resp.status == 200 and await resp.read() == made
        assert not list(spool.rglob("*"))  # the spool is empty again
        async with bridge.session.get(f"{bridge.url}/outputs/{out['spool_key']}") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["type"] == "output_not_found"
        return Round(status, body, told)
    finally:
        await s3_link.down()
        for runner in runners:
            await runner.cleanup()
