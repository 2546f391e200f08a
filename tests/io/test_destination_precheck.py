"""Destinations checked before the GPU is spent (comfy_bridge/delivery/precheck.py): the whole
bridge in front of the ComfyUI double, a real S3 server (SeaweedFS). A destination that
cannot work is a 422 naming the field, and no prompt reaches ComfyUI."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from comfy_bridge.delivery import precheck
from comfy_bridge.net import endpoint
from comfy_bridge.net import guard as netguard
from comfy_bridge.schemas.job import JobInput
from comfy_bridge.webhooks import WebhookSender
from tests.io.conftest import REGION
from tests.io.test_end_to_end import Bridge, bridge  # noqa: F401 - the fixture

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pre"}},
}


@pytest.fixture(autouse=True)
def fresh_caches():
    precheck.forget()
    endpoint._resolved.clear()
    yield
    precheck.forget()
    endpoint._resolved.clear()


def own_s3(weed: Any, bucket: str, **over: Any) -> dict[str, Any]:
    return {"endpoint_url": weed.endpoint, "bucket_name": bucket, "region": REGION,
            "access_key_id": weed.access_key, "secret_access_key": weed.secret_key, **over}


async def refused(b: Bridge, field: str, **fields: Any) -> dict[str, Any]:
    status, body = await b.generate(workflow_json=GRAPH, **fields)
    assert status == 422, body
    error = body["error"]
    assert error["type"] == "destination_refused" and error["retriable"] is False
    assert error["field"] == field, error
    assert not b.double.requests_to("/prompt", "POST"), "a prompt was submitted for a doomed request"
    return error


async def test_wrong_credentials_are_a_422_before_any_prompt(bridge, seaweed):
    b = await bridge()
    secret = "precheck-wrong-secret-91ab"
    error = await refused(b, "s3.access_key_id", s3=own_s3(seaweed, seaweed.bucket("outputs"), secret_access_key=secret))
    assert "does not accept the request's credentials" in error["message"]
    assert "SignatureDoesNotMatch" in error["message"] or "InvalidAccessKeyId" in error["message"]
    assert secret not in json.dumps(error) and seaweed.secret_key not in json.dumps(error)


async def test_missing_bucket_is_a_422_naming_it(bridge, seaweed):
    b = await bridge()
    error = await refused(b, "s3.bucket_name", s3=own_s3(seaweed, "no-such-bucket-pre"))
    assert "'no-such-bucket-pre' does not exist" in error["message"] and "create it" in error["message"]


async def test_request_endpoint_on_a_private_address_is_a_422(bridge, seaweed):
    b = await bridge(allow_private_urls=False)
    error = await refused(b, "s3.endpoint_url", s3=own_s3(seaweed, seaweed.bucket("outputs")))
    assert "not a public address" in error["message"] and "COMFY_BRIDGE_ALLOW_PRIVATE_URLS" in error["message"]


async def test_worker_credentials_never_go_to_a_request_endpoint(bridge, seaweed):
    b = await bridge(s3={"access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key})
    error = await refused(b, "s3.access_key_id",
                          s3={"endpoint_url": seaweed.endpoint, "bucket_name": seaweed.bucket("outputs")})
    assert "worker's credentials are not sent there" in error["message"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://127.0.0.1:9/hook", "not a public address"),
     ("http://169.254.169.254/latest", "not a public address"),
     ("https://no-such-host.invalid/hook", "does not exist"),
     ("http://[::1/hook", "not a URL the worker can call"),
     ("https://" + "a" * 70 + ".example/hook", "not a valid host name")],
    ids=["loopback", "metadata", "nxdomain", "malformed", "label-too-long"],
)
async def test_bad_webhook_url_is_a_422_before_any_prompt(bridge, url, reason):
    b = await bridge(allow_private_urls=False)
    error = await refused(b, "webhook.url", webhook={"url": url}, return_outputs_as_base64=True)
    assert reason in error["message"]


async def test_good_destination_is_checked_once_and_served(bridge, seaweed):
    b = await bridge()
    s3 = own_s3(seaweed, seaweed.bucket("outputs"))
    for n in range(2):
        status, body = await b.generate(workflow_json=GRAPH, s3=s3, request_id=f"ok-{n}")
        assert status == 200, body
        assert body["output"][0]["s3_key"].startswith(f"ok-{n}/")
    assert len(precheck._passed) == 1  # the second request reused the first one's check


async def test_webhook_host_that_rebinds_after_the_check_is_still_not_called(
    make_settings, http_server, monkeypatch
):
    """The pre-check saw a public address; the sender's own lookup gets loopback. The
    sender's guarded resolver checks the address it connects to, so nothing is sent."""
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response()

    port = URL(await http_server({"/hook": hook})).port
    name = "hook.rebind.test"
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, *args, **kwargs)
        answers.append("public" if not answers else "loopback")
        if answers[-1] == "public":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    # aiohttp's default resolver may be aiodns, which this fake DNS cannot answer for.
    monkeypatch.setattr(netguard, "DefaultResolver", ThreadedResolver)
    settings = make_settings(allow_private_urls=False, webhook_retries=0)
    job = JobInput.model_validate({"workflow_json": GRAPH, "webhook": {"url": f"http://{name}:{port}/hook"}})
    await precheck.check_destinations(job, settings)  # passes: the first answer is public
    sender = WebhookSender(settings)
    try:
        task = sender.schedule(job, {"id": job.request_id, "status": "success"})
        assert task is not None
        result = await task
    finally:
        await sender.aclose()
    assert not result.delivered and "non-public address" in (result.error or "")
    assert answers == ["public", "loopback"] and hits == []
