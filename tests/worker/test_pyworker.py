"""The real `vastai` PyWorker framework, run as `comfy-worker serve` against the router
emulator and the ComfyUI double: signatures, reports, overload, disconnects, failures."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from comfy_bridge.errors import ExecutionFailed
from tests.worker.conftest import SD15_UNITS, sd15_graph, until
from worker.client import WorkerClient

pytestmark = pytest.mark.timeout(90)


async def test_signed_request_is_served_and_reported_in_units(start_worker, double, emulator):
    w = await start_worker(double)
    view = await w.wait_ready()
    assert view.max_perf > 0  # the benchmark's units per second

    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        result = await client.generate({"workflow_json": sd15_graph(steps=20), "request_id": "fox-1"}, deadline_s=30)
    assert result.status == "success" and result.id == "fox-1"
    assert result.output and result.output[0].data  # inline base64 by default
    assert result.workload == pytest.approx(SD15_UNITS)
    # The router was asked for the request's units, and the worker reported them.
    assert emulator.routed[-1]["cost"] == pytest.approx(SD15_UNITS)
    report = await w.wait_report(lambda r: r["new_load"] == pytest.approx(SD15_UNITS))
    assert report["max_perf"] == pytest.approx(view.max_perf)
    assert report["error_msg"] == ""
    done = await w.wait_deleted(lambda d: d["request_idx"] == emulator.routed[-1]["request_idx"])
    assert done["success"] is True and done["status"] == "Success"
    await w.wait_report(lambda r: r["cur_perf"] == pytest.approx(SD15_UNITS))


async def test_benchmark_uses_fresh_seeds_so_every_prompt_executes(start_worker, double):
    w = await start_worker(double, benchmark_runs=2, benchmark_concurrency=2)
    await w.wait_ready()
    prompts = double.requests_to("/prompt", "POST")
    seeds = [r.json["prompt"]["3"]["inputs"]["seed"] for r in prompts]
    assert len(seeds) == 5  # warm-up + 2 runs x 2, not the framework's 1 + 8 x 10
    assert len(set(seeds)) == len(seeds)
    assert double.prompts_executed == len(seeds)  # nothing served from ComfyUI's cache


async def test_forged_or_missing_signature_is_refused(start_worker, double):
    w = await start_worker(double)
    await w.wait_ready()
    body = w.signed({"workflow_json": sd15_graph()})
    good_sig = body["auth_data"]["signature"]
    async with aiohttp.ClientSession() as s:
        forged = json.loads(json.dumps(body))
        forged["auth_data"]["url"] = "http://127.0.0.1:1"  # signed for another worker
        assert (await w.post(forged, session=s))[0] == 401
        forged["auth_data"]["url"] = w.url
        forged["auth_data"]["signature"] = good_sig[:-8] + "AAAAAAA="
        assert (await w.post(forged, session=s))[0] == 401
        missing = {"payload": body["payload"]}
        status, text = await w.post(missing, session=s)
        assert status == 422 and b"auth_data" in text
        status, _ = await w.post(body, session=s)
        assert status == 200
    await w.wait_report(lambda r: r["rej_load"] > 0)


async def test_failed_generation_is_reported_as_an_error_not_a_success(start_worker, double, emulator):
    w = await start_worker(double)
    await w.wait_ready()
    double.fail_next_prompt("RuntimeError", "boom", class_type="KSampler")
    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        with pytest.raises(ExecutionFailed) as info:
            await client.generate({"workflow_json": sd15_graph()}, deadline_s=30)
    assert info.value.http_status == 500
    assert "boom" in info.value.message
    idx = emulator.routed[-1]["request_idx"]
    done = await w.wait_deleted(lambda d: d["request_idx"] == idx)
    assert done["success"] is False and done["status"] == "Error"
    # The failure was never counted as work served (cur_perf).
    await w.wait_report(lambda r: r["cur_load"] == 0
                        and r["received_at"] > done.get("work_completed_at", 0))
    assert all(r["cur_perf"] == 0 for r in emulator.reports)


async def test_overload_gets_429(start_worker, double):
    w = await start_worker(double, max_queue_time_s=0.001)
    await w.wait_ready()
    double.hang_next_prompt()
    async with aiohttp.ClientSession() as s:
        first = asyncio.create_task(w.post(w.signed({"workflow_json": sd15_graph(seed=11)}), session=s))
        await until(lambda: double.queue and double.queue.remaining(), what="the first prompt in ComfyUI")
        status, body = await w.post(w.signed({"workflow_json": sd15_graph(seed=12)}), session=s)
        assert status == 429
        double.release()
        assert (await first)[0] == 200
    await w.wait_report(lambda r: r["rej_load"] == pytest.approx(SD15_UNITS))


async def test_client_that_disconnects_does_not_wedge_the_worker(start_worker, double, emulator):
    w = await start_worker(double)
    await w.wait_ready()
    double.hang_next_prompt()
    prompts_before = len(double.requests_to("/prompt", "POST"))
    async with aiohttp.ClientSession() as s:
        body = w.signed({"workflow_json": sd15_graph(seed=21)})
        gone = asyncio.create_task(w.post(body, session=s))
        await until(lambda: len(double.requests_to("/prompt", "POST")) > prompts_before, what="the prompt")
        gone.cancel()  # the caller hangs up mid-generation
        await asyncio.gather(gone, return_exceptions=True)
    idx = body["auth_data"]["request_idx"]
    done = await w.wait_deleted(lambda d: d["request_idx"] == idx)
    assert done["status"] == "Cancelled"
    double.release()
    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        result = await client.generate({"workflow_json": sd15_graph(seed=22)}, deadline_s=30)
    assert result.status == "success"
    await w.wait_report(lambda r: r["cur_load"] == 0 and r["num_requests_working"] == 0
                        and r["received_at"] > done.get("work_completed_at", 0))


async def test_benchmark_where_every_generation_fails_errors_the_worker(start_worker, double, emulator):
    for _ in range(10):
        double.fail_next_prompt("RuntimeError", "CUDA error: an illegal memory access was encountered")
    w = await start_worker(double)
    report = await w.wait_report(lambda r: r["error_msg"] != "")
    assert "No successful responses" in report["error_msg"]
    assert all(r["max_perf"] == 0 for r in emulator.reports)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{emulator.url}/route/", json={"endpoint": "test-endpoint", "api_key": "test-key", "cost": 1}) as r:
            answer = await r.json()
    assert "url" not in answer  # never routed to


async def test_missing_node_class_fails_readiness_with_its_name(start_worker, double):
    graph = sd15_graph()
    graph["3"]["class_type"] = "NoSuchSampler"
    w = await start_worker(double, benchmark=graph)
    report = await w.wait_report(lambda r: r["error_msg"] != "")
    assert "NoSuchSampler" in report["error_msg"]
    assert double.requests_to("/prompt", "POST") == []  # no benchmark raced a broken ComfyUI


async def test_comfyui_gone_for_good_reaches_the_autoscaler(start_worker, double):
    w = await start_worker(double, comfyui_gone_after_s=1, health_interval_s=0.2)
    await w.wait_ready()
    await double.stop()
    report = await w.wait_report(lambda r: r["error_msg"] != "")
    assert "has not answered" in report["error_msg"]


async def test_comfyui_back_within_the_grace_is_not_an_error(start_worker, double, emulator):
    w = await start_worker(double, comfyui_gone_after_s=60, health_interval_s=0.2)
    await w.wait_ready()
    await double.stop()
    await until(lambda: "ComfyUI is not answering" in w.log_text(), what="the worker to notice")
    await double.start()
    async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url) as client:
        result = await client.generate({"workflow_json": sd15_graph(seed=31)}, deadline_s=30)
    assert result.status == "success"
    assert all(r["error_msg"] == "" for r in emulator.reports)


async def test_spooled_output_is_fetched_through_the_signed_route(start_worker, double, tmp_path):
    """An output kept on the spool (issue 10 item 5) is fetched through the worker's signed
    POST /outputs/fetch; an unsigned or forged request gets the framework's 401."""
    w = await start_worker(double)
    await w.wait_ready()
    kept = w.cwd / "spool" / "order-9" / "0123456789ab" / "ComfyUI_00001_.png"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"\x89PNG\r\n\x1a\n spooled bytes")
    payload = {"spool_key": "order-9/0123456789ab/ComfyUI_00001_.png"}
    async with aiohttp.ClientSession() as s:
        signed = {"auth_data": w.emulator.auth_data(w.url, cost=0), "payload": payload}
        async with s.post(f"{w.url}/outputs/fetch", json=signed) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            assert await r.read() == kept.read_bytes()
        forged = json.loads(json.dumps(signed))
        forged["auth_data"]["signature"] = forged["auth_data"]["signature"][:-8] + "AAAAAAA="
        async with s.post(f"{w.url}/outputs/fetch", json=forged) as r:
            assert r.status == 401
        missing = {"auth_data": w.emulator.auth_data(w.url, cost=0), "payload": {"spool_key": "order-9/nope.png"}}
        async with s.post(f"{w.url}/outputs/fetch", json=missing) as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "output_not_found"
