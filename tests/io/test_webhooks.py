"""Webhooks: signed per Standard Webhooks (checked with the `standardwebhooks` library), retried with backoff, never in the way of the response."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import pytest
from aiohttp import web
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from comfy_bridge.schemas.job import JobInput
from comfy_bridge.webhooks import WebhookSender, sign, verify, whsec_form
from comfy_bridge.webhooks.signing import (
    ATTEMPT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)
from tests.io.conftest import free_port

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}
BODY = {"id": "req-wh", "status": "success", "prompt_id": "p1", "output": [{"filename": "a.png"}]}


def job(url: str, **webhook) -> JobInput:
    return JobInput.model_validate(
        {"request_id": "req-wh", "workflow_json": GRAPH, "webhook": {"url": url, **webhook}}
    )


class Receiver:
    """Answers the scripted statuses in turn (then 200) and keeps what it received."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.got.set()
        return web.Response(status=status)


@pytest.fixture
async def senders():
    made: list[WebhookSender] = []

    def make(settings) -> WebhookSender:
        s = WebhookSender(settings)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose()


async def test_signed_delivery_verified_by_receiver(make_settings, senders, http_server):
    receiver = Receiver()
    url = await http_server({"/hook": receiver.handle}) + "/hook?token=abc"
    sender = senders(make_settings())
    task = sender.schedule(job(url, secret="per-request-secret", extra_params={"user": 42}), BODY)
    result = await task
    assert result.delivered and result.attempts == 1
    [(headers, raw)] = receiver.received
    # The library's own verifier, with the plain secret as raw bytes and in its whsec_ form.
    expected = {**BODY, "extra_params": {"user": 42}, "type": "generation.succeeded"}
    assert Webhook(b"per-request-secret").verify(raw, headers) == expected
    assert Webhook(whsec_form("per-request-secret")).verify(raw, headers) == expected
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another-secret").verify(raw, headers)
    assert verify("per-request-secret", raw, headers)
    assert not verify("another-secret", raw, headers)
    assert headers[SIGNATURE_HEADER].startswith("v1,")
    assert headers[SIGNATURE_HEADER] == sign("per-request-secret", headers[ID_HEADER], headers[TIMESTAMP_HEADER], raw)
    assert headers[ID_HEADER] == "req-wh.generation.succeeded" and headers[ATTEMPT_HEADER] == "1"
    assert json.loads(raw) == expected


async def test_whsec_secret_and_event_types(make_settings, senders, http_server):
    receiver = Receiver()
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    secret = "whsec_" + base64.b64encode(b"\x00\x01random-key-bytes").decode()
    sender = senders(make_settings())
    failed = {"id": "req-wh", "status": "failed", "error": {"type": "x", "message": "m", "retriable": False}}
    redelivered = {"id": "req-wh", "status": "success", "event": "redelivered", "output": []}
    for body in (failed, redelivered):
        assert (await sender.schedule(job(url, secret=secret), body)).delivered
    types = [Webhook(secret).verify(raw, headers)["type"] for headers, raw in receiver.received]
    assert types == ["generation.failed", "generation.redelivered"]
    assert [h[ID_HEADER] for h, _ in receiver.received] == ["req-wh.generation.failed", "req-wh.generation.redelivered"]


async def test_settings_secret_and_unsigned(make_settings, senders, http_server):
    receiver = Receiver()
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    signed = senders(make_settings(webhook_secret=SecretStr("env-secret")))
    assert (await signed.schedule(job(url), BODY)).delivered
    unsigned = senders(make_settings())
    assert (await unsigned.schedule(job(url), BODY)).delivered
    (h1, raw1), (h2, _) = receiver.received
    assert verify("env-secret", raw1, h1)
    assert SIGNATURE_HEADER not in h2


def test_verify_rejects_stale_and_tampered():
    raw = b'{"a":1}'
    now = int(time.time())

    def headers(msg_id: str = "m1", ts: int = now, sig_ts: int = now, sig_id: str = "m1") -> dict[str, str]:
        return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign("s3cr3t", sig_id, sig_ts, raw)}

    assert verify("s3cr3t", raw, headers())
    assert not verify("s3cr3t", raw, headers(ts=now - 1000, sig_ts=now - 1000))  # replayed too late
    assert not verify("s3cr3t", b'{"a":2}', headers())
    assert not verify("s3cr3t", raw, headers(ts=now + 1))  # the timestamp is signed
    assert not verify("s3cr3t", raw, headers(msg_id="m2"))  # so is the id
    assert not verify("s3cr3t", raw, {ID_HEADER: "m1", TIMESTAMP_HEADER: str(now)})


async def test_retried_with_backoff_until_accepted(make_settings, senders, http_server):
    receiver = Receiver([503, 500, 429])
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    result = await senders(make_settings(webhook_retries=3)).schedule(job(url, secret="k3y-value"), BODY)
    assert result.delivered and result.attempts == 4
    assert [h[ATTEMPT_HEADER] for h, _ in receiver.received] == ["1", "2", "3", "4"]
    for headers, raw in receiver.received:  # each attempt signed afresh, under one message id
        assert verify("k3y-value", raw, headers)
    assert {h[ID_HEADER] for h, _ in receiver.received} == {"req-wh.generation.succeeded"}


async def test_client_error_is_final(make_settings, senders, http_server):
    receiver = Receiver([400])
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    result = await senders(make_settings()).schedule(job(url), BODY)
    assert not result.delivered and result.attempts == 1 and result.status == 400


async def test_receiver_down_retries_then_gives_up_without_leaking(make_settings, senders, caplog):
    caplog.set_level(logging.DEBUG, logger="comfy_bridge")
    url = f"http://127.0.0.1:{free_port()}/hook?token=tok-123456"
    sender = senders(make_settings(webhook_retries=2))
    task = sender.schedule(job(url, secret="hidden-secret-77"), BODY)
    assert task is not None and not task.done()  # schedule returned before any attempt
    result = await task
    assert not result.delivered and result.attempts == 3
    assert "hidden-secret-77" not in caplog.text and "tok-123456" not in caplog.text
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


async def test_private_webhook_refused_unless_allowed(make_settings, senders, http_server):
    receiver = Receiver()
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    result = await senders(make_settings(allow_private_urls=False)).schedule(job(url), BODY)
    assert not result.delivered and result.attempts == 0 and not receiver.received
    named = url.replace("127.0.0.1", "localhost")
    result = await senders(make_settings(allow_private_urls=False)).schedule(job(named), BODY)
    assert not result.delivered and not receiver.received


async def test_no_webhook_no_task(make_settings, senders):
    plain = JobInput.model_validate({"workflow_json": GRAPH})
    assert senders(make_settings()).schedule(plain, BODY) is None


async def test_aclose_cancels_what_cannot_finish(make_settings, http_server):
    hold = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await hold.wait()
        return web.Response()

    url = await http_server({"/hook": slow}) + "/hook"
    sender = WebhookSender(make_settings())
    task = sender.schedule(job(url), BODY)
    await asyncio.sleep(0)
    await sender.aclose(timeout_s=0.2)
    assert task.cancelled() and sender.pending == 0
    hold.set()


async def test_big_inline_outputs_leave_the_webhook_body_urls_stay(make_settings, senders, http_server):
    """Issue 10 item 6: above COMFY_BRIDGE_WEBHOOK_MAX_INLINE_BYTES the body carries no base64."""
    receiver = Receiver()
    url = await http_server({"/hook": receiver.handle}) + "/hook"
    sender = senders(make_settings(webhook_max_inline_bytes=1000))
    small = {"filename": "s.png", "bytes": 600, "data": "A" * 800}
    body = {"id": "req-wh", "status": "success", "output": [
        small, {"filename": "b.png", "bytes": 900, "data": "B" * 1200},
        {"filename": "c.mp4", "bytes": 10**9, "url": "https://bucket.example/c.mp4", "s3_key": "k/c.mp4"}]}
    assert (await sender.schedule(job(url), body)).delivered
    [(_, raw)] = receiver.received
    sent = json.loads(raw)["output"]
    assert [o.get("data_omitted") for o in sent] == [True, True, None]
    assert all("data" not in o for o in sent) and sent[2]["url"] == "https://bucket.example/c.mp4"
    receiver.received.clear()
    assert (await sender.schedule(job(url), {"id": "req-wh", "output": [small]})).delivered
    assert json.loads(receiver.received[0][1])["output"] == [small]  # under the cap: as is
    receiver.received.clear()
    streamed = {"filename": "v.mp4", "bytes": 10**9, "data": None}  # inline, streamed from disk
    assert (await sender.schedule(job(url), {"id": "req-wh", "output": [small, streamed]})).delivered
    assert [o.get("data_omitted") for o in json.loads(receiver.received[0][1])["output"]] == [None, True]
