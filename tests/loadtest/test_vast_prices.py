"""The workers' $/hour from the Vast API (worker/loadtest/vast_prices.py), against a
loopback stand-in of GET /api/v0/instances/: matched by public address and host port,
weighted by the requests each worker answered; a key that may not list instances gives
no dollars and the report says why."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.support import serve_app
from worker.loadtest.vast_prices import PriceLookupError, match_prices, worker_prices

INSTANCES = [
    {"id": 1, "public_ipaddr": "10.0.0.5", "dph_total": 0.40, "ports": {"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41001"}]}},
    {"id": 2, "public_ipaddr": "10.0.0.5", "dph_total": 0.55, "ports": {"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41002"}]}},
    {"id": 3, "public_ipaddr": "10.0.0.9", "dph_total": 1.20, "ports": {}},
]


def test_workers_are_matched_by_address_and_port():
    urls = ["http://10.0.0.5:41002", "https://10.0.0.9:5555", "http://10.0.0.5:1", "http://10.9.9.9:41001"]
    assert match_prices(INSTANCES, urls) == {"http://10.0.0.5:41002": 0.55, "https://10.0.0.9:5555": 1.20}


@pytest.fixture
async def vast_api():
    async def instances(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer good":
            return web.json_response({"error": "forbidden"}, status=403)
        return web.json_response({"instances": INSTANCES})

    app = web.Application()
    app.router.add_get("/api/v0/instances/", instances)
    runners: list = []
    port = await serve_app(app, runners)
    yield f"http://127.0.0.1:{port}"
    for r in runners:
        await r.cleanup()


async def test_prices_from_the_api(vast_api):
    assert await worker_prices("good", ["http://10.0.0.5:41001"], vast_api) == {"http://10.0.0.5:41001": 0.40}
    with pytest.raises(PriceLookupError, match="HTTP 403.*--gpu-price-per-hour"):
        await worker_prices("bad", ["http://10.0.0.5:41001"], vast_api)
    with pytest.raises(PriceLookupError, match="none of the run's workers"):
        await worker_prices("good", ["http://10.1.1.1:3000"], vast_api)


async def test_a_run_takes_the_api_price_weighted_by_requests(vast_api, monkeypatch):
    import argparse

    from worker.loadtest import cli
    from worker.loadtest.protocol import RequestRecord, RunMeta, TargetMeta

    meta = RunMeta(workflow="w", requests=4, mode="closed", started=0.0,
                   targets=[TargetMeta(name="vast:ep", kind="vast"), TargetMeta(name="vast:other", kind="vast")])
    def rec(i: int, worker: str, target: str = "vast:ep") -> RequestRecord:
        return RequestRecord(status="success", target=target, index=i, request_id=f"r{i}", start=0.0, end=1.0,
                             latency_ms=1000.0, worker=worker)
    records = [rec(0, "http://10.0.0.5:41001"), rec(1, "http://10.0.0.5:41001"), rec(2, "http://10.0.0.5:41001"),
               rec(3, "http://10.0.0.5:41002"), rec(4, "http://10.1.1.1:3000", "vast:other")]
    args = argparse.Namespace(vast_api_url=vast_api, router="https://run.vast.ai", api_key="good")
    await cli._prices_from_vast(args, meta, records)
    assert meta.targets[0].gpu_price_per_hour == pytest.approx((3 * 0.40 + 0.55) / 4)
    assert meta.targets[0].price_source.startswith("Vast API dph_total of 2 worker(s)")
    assert meta.targets[1].gpu_price_per_hour is None and "none of the run's workers" in meta.targets[1].price_source
