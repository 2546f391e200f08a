"""Secrets never reach a log line or a response body.

Requests carry S3 keys, webhook secrets, signed URLs and PyWorker auth signatures, the
environment carries S3_*, COMFY_BRIDGE_WEBHOOK_SECRET, MASTER_TOKEN and HF_TOKEN, and
every request is driven down a failing path (wrong credentials, S3 or webhook down,
forged signature, unreachable input URL), where error messages are built from
exceptions that may quote what they were given. Everything logged (through the JSON
formatter, at DEBUG) and every body answered is searched for each secret.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from comfy_bridge.observability import Metrics
from comfy_bridge.settings import S3Settings
from tests.comfy_double import ComfyDouble
from tests.io.seaweed import REGION, Seaweed, seaweed_or_skip
from tests.reliability.faults.stack import Stack, free_port, start_stack
from tests.support import json_logs, save_graph

pytestmark = pytest.mark.timeout(90)

KEY_ID = "AKIACVWLEAKCHECK0001"
S3_SECRET = "s3-secret-9fJ2kLq8ZxWm"
ENV_KEY_ID = "AKIACVWLEAKCHECKENV2"
ENV_S3_SECRET = "env-s3-secret-Tq71Hd0"
WEBHOOK_SECRET = "whsec-request-7Hq2pLm"
ENV_WEBHOOK_SECRET = "whsec-env-3Kd9vBn"
URL_SIGNATURE = "UrlSig0123456789abcdefDEADBEEF"
URL_CREDENTIAL = "AKIAURLCREDENTIAL777"
MASTER_TOKEN = "mtoken-secret-5Lp0Xy"
HF_TOKEN = "hf_secretToken8QwErTy"

REQUEST_SECRETS = [KEY_ID, S3_SECRET, WEBHOOK_SECRET, URL_SIGNATURE, URL_CREDENTIAL]


def assert_clean(where: str, text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{leaked} found in {where}: ...{_around(text, leaked[0])}..."


def _around(text: str, secret: str) -> str:
    i = text.index(secret)
    return text[max(0, i - 200): i + 60]


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    w = seaweed_or_skip(tmp_path_factory.mktemp("seaweed"))
    yield w
    w.stop()


@pytest.fixture
def all_logs() -> Iterator[io.StringIO]:
    """Every record of every logger, at DEBUG, as the JSON lines the worker writes."""
    with json_logs(logging.DEBUG) as stream:
        yield stream


@pytest.fixture
async def failing_hook() -> AsyncIterator[str]:
    """A webhook receiver that always answers 500."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, text="receiver broken")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    await runner.cleanup()


def _signed_url(port: int) -> str:
    return (f"http://127.0.0.1:{port}/in.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={URL_CREDENTIAL}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Signature={URL_SIGNATURE}")


async def test_bridge_failure_paths_leak_nothing(make_bridge, comfy_double: ComfyDouble, weed: Seaweed,
                                                 all_logs: io.StringIO, failing_hook: str, tmp_path: Path):
    bucket = weed.bucket("secrets")
    env_s3 = S3Settings(access_key_id=SecretStr(ENV_KEY_ID), secret_access_key=SecretStr(ENV_S3_SECRET),
                        endpoint_url=weed.endpoint, bucket_name=bucket, region=REGION, retries=1,
                        retry_backoff_s=0.01)
    bridge = await make_bridge(
        comfy_double.url, comfy_double.root, s3=env_s3, webhook_secret=SecretStr(ENV_WEBHOOK_SECRET),
        webhook_retries=1, webhook_retry_backoff_s=0.01, allow_private_urls=True,
        spool_dir=tmp_path / "spool", metrics=Metrics(),
    )
    dead = free_port()
    bad_s3 = {"access_key_id": KEY_ID, "secret_access_key": S3_SECRET, "endpoint_url": weed.endpoint,
              "bucket_name": bucket, "region": REGION}
    requests: list[dict[str, Any]] = [
        # wrong credentials on a real S3 server (request's own keys, then the environment's)
        {"s3": bad_s3},
        {"return_outputs_as_base64": False},
        # S3 down
        {"s3": {**bad_s3, "endpoint_url": f"http://127.0.0.1:{dead}"}},
        # webhook down, and a webhook that answers 500, each with a secret
        {"return_outputs_as_base64": True, "webhook": {"url": f"http://127.0.0.1:{dead}/hook", "secret": WEBHOOK_SECRET}},
        {"return_outputs_as_base64": True, "webhook": {"url": failing_hook, "secret": WEBHOOK_SECRET}},
        # a signed input URL that cannot be fetched
        {"return_outputs_as_base64": True, "images": [{"name": "in.png", "image": _signed_url(dead)}]},
        # malformed requests still carrying secrets (validation errors must not echo values)
        {"s3": {**bad_s3, "bucket_name": ["not", "a", "string"]}},
        {"webhook": {"url": "ftp://nope", "secret": WEBHOOK_SECRET}},
        {"s3": {**bad_s3, "unexpected": S3_SECRET}},
    ]
    bodies: list[str] = []
    for i, extra in enumerate(requests):
        status, body = await bridge.generate(save_graph(color=i + 1), **extra)
        assert status != 200 or "webhook" in extra, (extra, body)
        bodies.append(json.dumps(body))
    await bridge.runner.drain()
    sender = bridge.runner.webhooks
    if sender is not None and hasattr(sender, "aclose"):
        await sender.aclose()  # let retries finish, so their log lines are in

    secrets = REQUEST_SECRETS + [ENV_KEY_ID, ENV_S3_SECRET, ENV_WEBHOOK_SECRET, weed.secret_key]
    for extra, body in zip(requests, bodies):
        assert_clean(f"the response to {list(extra)}", body, secrets)
    text = all_logs.getvalue()
    assert "request finished" in text  # the capture saw the requests
    assert_clean("the logs", text, secrets)
    # The failures were real: S3 refused, the webhook failed, the URL failed.
    assert re.search(r"delivery failed|could not be uploaded", text)
    assert "webhook" in text


async def test_worker_logs_and_answers_leak_nothing(tmp_path: Path):
    """The whole worker (PyWorker framework + bridge), its environment full of secrets."""
    env = {
        "MASTER_TOKEN": MASTER_TOKEN,
        "HF_TOKEN": HF_TOKEN,
        "S3_ACCESS_KEY_ID": ENV_KEY_ID,
        "S3_SECRET_ACCESS_KEY": ENV_S3_SECRET,
        "COMFY_BRIDGE_WEBHOOK_SECRET": ENV_WEBHOOK_SECRET,
    }
    stack = start_stack(tmp_path / "stack", env=env, args=["--log-level", "DEBUG"])
    try:
        await _drive_worker(stack)
    finally:
        stack.stop()
    secrets = REQUEST_SECRETS + [MASTER_TOKEN, HF_TOKEN, ENV_KEY_ID, ENV_S3_SECRET, ENV_WEBHOOK_SECRET]
    worker_log = stack.log_path.read_text(errors="replace")
    assert "request finished" in worker_log
    assert_clean("the worker's log", worker_log, secrets + stack.signatures)
    comfy_log = "".join(p.read_text(errors="replace") for p in (tmp_path / "stack").rglob("comfyui.log"))
    assert_clean("ComfyUI's log", comfy_log, secrets + stack.signatures)
    for where, body in stack.bodies:
        assert_clean(where, body, secrets + stack.signatures)


async def _drive_worker(stack: Stack) -> None:
    stack.signatures = []  # type: ignore[attr-defined]
    stack.bodies = []  # type: ignore[attr-defined]
    dead = free_port()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def call(job: dict[str, Any], forge: bool = False) -> int:
            auth = await stack.route(session)
            assert auth is not None
            stack.signatures.append(auth["signature"])
            if forge:  # a signature that does not verify (another message's)
                auth = {**auth, "url": auth["url"] + "/"}
            payload = {"auth_data": auth, "payload": {"input": job}}
            async with session.post(stack.worker_url + "/generate/sync", json=payload) as r:
                stack.bodies.append((f"the worker's {r.status} answer", await r.text()))
                return r.status

        bad_s3 = {"access_key_id": KEY_ID, "secret_access_key": S3_SECRET,
                  "endpoint_url": f"http://127.0.0.1:{dead}", "bucket_name": "nowhere", "region": REGION}
        assert await call(stack.job(s3=bad_s3)) == 502
        assert await call(stack.job(webhook={"url": f"http://127.0.0.1:{dead}/h", "secret": WEBHOOK_SECRET})) == 200
        assert await call(stack.job(images=[{"name": "in.png", "image": _signed_url(dead)}])) == 422
        assert await call(stack.job(s3={**bad_s3, "bucket_name": 5}), forge=True) == 401
        assert await call(stack.job(webhook={"url": "nope", "secret": WEBHOOK_SECRET})) == 422
        # the environment's S3 keys are never sent to a request's own endpoint
        env_keys = {"endpoint_url": f"http://127.0.0.1:{dead}", "bucket_name": "env-keys", "region": REGION}
        assert await call(stack.job(s3=env_keys)) == 422


def test_structured_log_fields_are_scrubbed_too():
    with json_logs() as stream:
        logging.getLogger("test.secrets.fields").warning(
            "upload failed", extra={"fields": {"secret_access_key": "AKIA-LEAK-ME", "endpoint": "x"}})
    line = stream.getvalue()
    assert "AKIA-LEAK-ME" not in line and '"endpoint": "x"' in line
