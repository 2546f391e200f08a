"""Nothing made is lost (issue 10 item 5): S3 down, 502 with inline copies, S3 up, object
appears, the webhook says so, and no file is left on the worker. Against a real SeaweedFS
cut off and reconnected by a TCP forwarder (tests/io/outage.py), and the ComfyUI double."""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web

from comfy_bridge.settings import S3Settings
from tests.io.conftest import REGION
from tests.io.outage import Outage
from tests.support import save_graph


async def test_spooled_outputs_reach_s3_when_it_is_back(seaweed, comfy_double, make_bridge, http_server, tmp_path):
    bucket = seaweed.bucket("outputs")
    port = int(seaweed.endpoint.rsplit(":", 1)[1])
    s3_link = Outage("127.0.0.1", port)
    await s3_link.up()
    hooks: asyncio.Queue[dict] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await hooks.put(await request.json())
        return web.Response(status=204)

    hook_url = await http_server({"/hook": receive}) + "/hook"
    spool = tmp_path / "spool"
    s3 = S3Settings(endpoint_url=s3_link.url, bucket_name=bucket, region=REGION, prefix="out",
                    access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key,
                    retries=1, retry_backoff_s=0.05)
    bridge = await make_bridge(comfy_double.url, comfy_double.root, s3=s3, spool_dir=spool,
                               allow_private_urls=True, redeliver_max_backoff_s=0.2, webhook_retry_backoff_s=0.05)

    await s3_link.down()  # the outage
    status, body = await bridge.generate(save_graph(color=0x123456), request_id="outage",
                                         webhook={"url": hook_url})
    assert status == 502 and body["error"]["retriable"] is True, body
    [out] = body["output"]
    made = base64.b64decode(out["data"])  # the inline copy
    assert out["upload_error"] and out["spool_key"].startswith("outage/")
    failed_hook = await asyncio.wait_for(hooks.get(), 10)
    assert failed_hook["status"] == "failed"

    # Meanwhile the file can be fetched from the bridge's loopback API.
    async with bridge.session.get(f"{bridge.url}/outputs/{out['spool_key']}") as resp:
        assert resp.status == 200 and await resp.read() == made
    await bridge.runner.drain()
    assert not [p for p in comfy_double.output_dir.rglob("*") if p.is_file()]  # ComfyUI's folder: empty

    await s3_link.up()  # S3 is back
    told = await asyncio.wait_for(hooks.get(), 30)
    assert told["id"] == "outage" and told["status"] == "success" and told["event"] == "redelivered"
    [stored] = told["output"]
    key = stored["s3_key"]
    assert key.startswith("out/outage/") and key.endswith(out["filename"]) and "data" not in stored
    assert seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == made
    async with bridge.session.get(stored["url"]) as resp:
        assert resp.status == 200 and await resp.read() == made
    assert not [p for p in spool.rglob("*")]  # the spool is empty again
    async with bridge.session.get(f"{bridge.url}/outputs/{out['spool_key']}") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["type"] == "output_not_found"
    await s3_link.down()
