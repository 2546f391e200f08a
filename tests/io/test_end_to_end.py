"""The whole bridge (build_app) in front of the ComfyUI double, delivering to SeaweedFS."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from comfy_bridge.app import RUNNER_KEY, build_app
from tests.io.conftest import REGION, free_port, s3_env
from tests.io.helpers import png_bytes
from tests.support import serve_app

MODELS = {"checkpoints": ["sd_xl_base_1.0.safetensors"]}


class Bridge:
    def __init__(self, url: str, app: web.Application, session: aiohttp.ClientSession) -> None:
        self.url, self.app, self.session = url, app, session
        self.double: Any = None

    async def generate(self, **fields: Any) -> tuple[int, dict]:
        async with self.session.post(self.url + "/generate/sync", json={"input": fields}) as r:
            return r.status, json.loads(await r.text())

    @property
    def runner(self) -> Any:
        return self.app[RUNNER_KEY]


@pytest.fixture
async def bridge(make_settings, make_comfy_double, seaweed) -> AsyncIterator:
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def make(s3: dict | None = None, **kw: Any) -> Bridge:
        double = await make_comfy_double(models=MODELS)
        settings = make_settings(s3=s3, comfyui_url=double.url, comfyui_path=double.root, **kw)
        app = build_app(settings)
        port = await serve_app(app, runners, shutdown_timeout=1.0)
        made = Bridge(f"http://127.0.0.1:{port}", app, session)
        made.double = double
        return made

    yield make
    for runner in runners:
        webhooks = runner.app[RUNNER_KEY].webhooks
        if webhooks is not None:
            await webhooks.aclose(timeout_s=0)
        await runner.cleanup()
    await session.close()


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as r:
        assert r.status == 200
        return await r.read()


async def test_template_request_delivered_to_s3(bridge, seaweed):
    bucket = seaweed.bucket("outputs")
    b = await bridge(s3=s3_env(seaweed, bucket, prefix="e2e"))
    status, body = await b.generate(
        request_id="tpl-1", modifier="sdxl_t2i",
        modifications={"prompt": "a red fox", "seed": 7, "steps": 4, "width": 512, "height": 512},
    )
    assert status == 200, body
    [out] = body["output"]
    assert out["s3_key"].startswith("e2e/tpl-1/") and out["mimetype"] == "image/png" and out.get("data") is None
    image = Image.open(io.BytesIO(await fetch(b.session, out["url"])))
    assert image.size == (512, 512)


async def test_res4lyf_template_and_webp_conversion(bridge, seaweed):
    bucket = seaweed.bucket("outputs")
    b = await bridge()
    s3 = {"endpoint_url": seaweed.endpoint, "bucket_name": bucket, "region": REGION,
          "access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key}
    status, body = await b.generate(
        modifier="sdxl_res4lyf_t2i", modifications={"steps": 2, "width": 512, "height": 512, "batch_size": 2},
        s3=s3, output={"format": "webp", "quality": 70},
    )
    assert status == 200, body
    assert len(body["output"]) == 2
    for out in body["output"]:
        assert out["filename"].endswith(".webp") and out["mimetype"] == "image/webp"
        assert (await fetch(b.session, out["url"]))[8:12] == b"WEBP"


async def test_bad_template_calls_get_422(bridge):
    b = await bridge()
    status, body = await b.generate(modifier="sdxl_t3i", modifications={})
    assert status == 422 and body["error"]["type"] == "unknown_template"
    assert "sdxl_t2i" in body["error"]["available"]
    status, body = await b.generate(modifier="sdxl_t2i", modifications={"steps": 10_000, "style": "x"})
    assert status == 422
    assert {e["param"] for e in body["error"]["errors"]} == {"steps", "style"}
    assert "steps" in body["error"]["allowed"]


async def test_url_input_through_load_image(bridge, seaweed, http_server):
    source = png_bytes(40, 30, (0, 0, 255))

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=source, content_type="image/png")

    base = await http_server({"/in.png": serve})
    b = await bridge(s3=s3_env(seaweed, seaweed.bucket("outputs")))
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    status, body = await b.generate(workflow_json=graph, images=[{"name": "photo.png", "image": base + "/in.png"}])
    assert status == 200, body
    assert Image.open(io.BytesIO(await fetch(b.session, body["output"][0]["url"]))).size == (40, 30)
    status, body = await b.generate(workflow_json=graph, images=[{"name": "photo.png", "image": base + "/nope.png"}])
    assert status == 422 and body["error"]["name"] == "photo.png" and "HTTP 404" in body["error"]["message"]


async def test_delivery_failure_is_502_with_outputs_inline_and_no_secret(bridge, seaweed):
    secret = "e2e-wrong-secret-abcdef"
    b = await bridge(s3=s3_env(seaweed, seaweed.bucket("outputs"), secret_access_key=secret))
    status, body = await b.generate(
        request_id="fail-1", modifier="sdxl_t2i", modifications={"width": 512, "height": 512, "steps": 2},
    )
    assert status == 502 and body["error"]["type"] == "delivery_failed" and body["error"]["retriable"]
    [out] = body["output"]
    assert "SignatureDoesNotMatch" in out["upload_error"]
    assert Image.open(io.BytesIO(base64.b64decode(out["data"]))).size == (512, 512)
    assert secret not in json.dumps(body) and seaweed.secret_key not in json.dumps(body)


async def test_webhook_down_does_not_delay_the_response(bridge, seaweed):
    # Backoff of 30 s: had the response waited for the webhook, this test would time out.
    b = await bridge(webhook_retries=3, webhook_retry_backoff_s=30.0)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "w"}},
    }
    status, body = await b.generate(workflow_json=graph, webhook={"url": dead, "secret": "whs-123456"})
    assert status == 200 and body["status"] == "success"
    sender = b.runner.webhooks
    await asyncio.sleep(0)
    assert sender.pending == 1  # still retrying in the background


async def test_webhook_gets_signed_result(bridge, http_server):
    got: asyncio.Queue = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put((dict(request.headers), await request.read()))
        return web.Response()

    from comfy_bridge.webhooks import verify

    url = await http_server({"/hook": hook}) + "/hook"
    b = await bridge()
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "w"}},
    }
    status, body = await b.generate(request_id="wh-ok", workflow_json=graph,
                                    webhook={"url": url, "secret": "sig-secret", "extra_params": {"job": 9}})
    assert status == 200
    headers, raw = await asyncio.wait_for(got.get(), 30)
    assert verify("sig-secret", raw, headers)
    sent = json.loads(raw)
    assert sent["id"] == "wh-ok" and sent["extra_params"] == {"job": 9}
    assert sent["output"] == body["output"]
