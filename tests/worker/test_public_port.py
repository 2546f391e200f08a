"""The public PyWorker port under hostile or unexpected conditions: oversized unsigned
bodies (worker/body_cap.py) and a `vastai` that lacks what worker/honest_metrics.py needs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.support import free_port, vast_env
from tests.worker.conftest import sd15_graph
from worker import honest_metrics

pytestmark = pytest.mark.timeout(90)

CAP = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_oversized_unsigned_body_is_refused_before_it_is_read(start_worker, double):
    w = await start_worker(double, max_body_bytes=CAP)
    await w.wait_ready()
    def unsigned(job: dict) -> dict:
        body = w.signed(job)
        body["auth_data"]["signature"] = "forged"
        return body

    body = unsigned({"workflow_json": sd15_graph(), "pad": "A" * (2 * CAP)})
    async with aiohttp.ClientSession() as s:
        status, raw = await w.post(body, session=s)
        assert status == 413, raw[:200]
        error = json.loads(raw)["error"]
        assert error["type"] == "payload_too_large" and error["retriable"] is False
        assert "COMFY_WORKER_MAX_BODY_BYTES" in error["message"] and error["max_bytes"] == CAP
        # The framework's own body-reading routes are capped too.
        async with s.post(f"{w.url}/session/create", data=b"{" + b" " * (2 * CAP) + b"}") as r:
            assert r.status == 413
        # Under the cap, an unsigned body still reaches the framework's signature check.
        assert (await w.post(unsigned({"workflow_json": sd15_graph()}), session=s))[0] == 401
        # A signed request is served as before.
        assert (await w.post(w.signed({"workflow_json": sd15_graph()}), session=s))[0] == 200


async def test_chunked_body_without_length_stops_at_the_cap(start_worker, double):
    """No Content-Length to refuse on: the worker reads at most the cap, answers 413, and
    its memory does not grow with what the client keeps sending."""
    w = await start_worker(double, max_body_bytes=CAP)
    await w.wait_ready()
    before = rss_bytes(w.proc.pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
    writer.write(
        b"POST /generate/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"A" * (256 * 1024)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"

    async def flood() -> int:
        sent = 0
        try:
            while sent < 256 * 1024 * 1024:  # 256 MiB if nobody stops us
                writer.write(framed)
                await writer.drain()
                sent += len(chunk)
        except (ConnectionError, OSError):
            pass
        return sent

    sender = asyncio.create_task(flood())
    status_line = await asyncio.wait_for(reader.readline(), 30)
    sender.cancel()
    writer.close()
    await asyncio.gather(sender, return_exceptions=True)
    assert status_line.split()[1] == b"413", status_line
    grown = rss_bytes(w.proc.pid) - before
    assert grown < 48 * 1024 * 1024, f"the worker's RSS grew by {grown} bytes"


def test_honest_metrics_fail_loudly_when_vastai_internals_are_missing(monkeypatch):
    for name, value in vast_env({}, report_addr="http://127.0.0.1:9", port=free_port(), container_id=1).items():
        monkeypatch.setenv(name, value)
    backend = SimpleNamespace(metrics=honest_metrics.Metrics())
    assert honest_metrics.missing_internals(backend) == []
    monkeypatch.delattr(honest_metrics.Metrics, "_request_success")
    with pytest.raises(honest_metrics.FrameworkMismatch, match=r"vastai .* lacks Metrics\._request_success"):
        honest_metrics.install(backend)


def test_honest_metrics_fail_loudly_without_a_backend_metrics():
    with pytest.raises(honest_metrics.FrameworkMismatch, match=r"Backend\.metrics"):
        honest_metrics.install(SimpleNamespace())
