"""`comfy-worker loadtest --target vast:...` through the whole local stack: the router
emulator, the real PyWorker (`vastai` framework) with the bridge, the ComfyUI double.

50 requests with injected failures: an execution error in the double (500, not retried),
a ComfyUI 503 on one POST /prompt (the bridge answers 503, the client retries), and one
429 answered in the framework's way (empty body) by the port mapping in front of the
worker. The counts, the percentiles, the dollars and the plots are checked against
results.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy_double import ExecError
from tests.worker.conftest import sd15_graph

N = 50
PRICE = 1.8  # the worker's COMFY_WORKER_GPU_PRICE_PER_HOUR


class _Once(dict):
    """The double's http_status faults, each answered once."""

    def get(self, key, default=None):  # type: ignore[override]
        return self.pop(key, default)


@pytest.fixture
async def stack(emulator, double, start_worker, port_map):
    worker = await start_worker(double, public_port=port_map.public_port, gpu_price_per_hour=PRICE)
    port_map.worker_port = worker.port
    await worker.wait_ready()
    return emulator, double, port_map


async def test_fifty_requests_with_injected_failures(stack, loadtest, tmp_path: Path):
    emulator, double, port_map = stack
    graph = tmp_path / "sd15.json"
    graph.write_text(json.dumps(sd15_graph()))
    double.faults.exec_errors.append(ExecError(exception_type="RuntimeError", message="injected"))
    double.faults.http_status = _Once({"/prompt": 503})
    port_map.inject = {port_map.calls + 7: 429}
    prompts_before = len(double.requests_to("/prompt", "POST"))

    run = await loadtest(str(graph), "--target", "vast:test-endpoint", "--router", emulator.url,
                         "--api-key", "test-key", "-n", str(N), "-c", "4", "--seed", "7")

    assert run.code == 1  # some request failed
    recs = run.records
    assert len(recs) == N and sorted(r["index"] for r in recs) == list(range(N))
    failed = [r for r in recs if r["status"] == "failed"]
    assert [(r["http_status"], r["error_type"], r["retriable"], r["attempts"]) for r in failed] == [
        (500, "execution_error", False, 1)]
    retried = sorted(reason for r in recs for reason in r["retried_on"])
    assert retried == ["429", "503"]
    assert sum(r["attempts"] for r in recs) == N + 2
    assert {r["worker"] for r in recs} == {f"http://127.0.0.1:{port_map.public_port}"}

    # Fresh seeds: every prompt ComfyUI got (retries included) has its own seed.
    seeds = [p.json["prompt"]["3"]["inputs"]["seed"] for p in double.requests_to("/prompt", "POST")[prompts_before:]]
    assert len(seeds) == N + 1 and len(set(seeds)) == N

    s = run.stats["vast:test-endpoint"]
    assert (s["succeeded"], s["failed"], s["cancelled"]) == (N - 1, 1, 0)
    assert s["failures_by_type"] == {"execution_error": 1}
    assert s["retries_by_reason"] == {"429": 1, "503": 1}
    ok = [r for r in recs if r["status"] == "success"]
    lat = [r["latency_ms"] for r in ok]
    for q in (50, 95, 99):
        assert s["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(lat, q), rel=1e-12)
        assert f"| latency p{q} (ms) | {np.percentile(lat, q):,.1f} |" in run.report
    assert s["latency_ms"]["max"] == max(lat)

    # Dollars: the workers' cost.usd follows from their price and execution time; the
    # report's price is the one they billed at, and $/1,000 follows from it.
    for r in ok:
        assert r["cost_usd"] == pytest.approx(r["timings"]["execution_ms"] / 1000 * PRICE / 3600, abs=1e-8)
    gpu = sum(r["timings"]["execution_ms"] for r in ok) / 1000
    assert s["gpu_seconds"] == pytest.approx(gpu)
    assert s["price_per_hour"] == PRICE and "COMFY_WORKER_GPU_PRICE_PER_HOUR" in s["price_source"]
    assert s["usd_per_1000_gpu"] == pytest.approx(s["price_per_hour"] / 3600 * gpu / len(ok) * 1000)
    fleet = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    assert s["usd_per_1000_fleet"] == pytest.approx(s["price_per_hour"] / 3600 * fleet / len(ok) * 1000)

    for name in ("latency_hist.png", "latency_time.png", "throughput.png", "per_worker.png"):
        with Image.open(run.out / name) as img:
            img.verify()
            assert img.format == "PNG"
    html = (run.out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "Local run" in run.report and run.meta["local"] is True


async def test_cold_start_waits_are_counted(emulator, double, start_worker, loadtest, workflow_file):
    import asyncio

    # The run starts before any worker exists: the router answers "no worker ready" until
    # the worker has benchmarked, and the client polls with the request's place kept.
    run_task = asyncio.create_task(loadtest(str(workflow_file), "--target", "vast:test-endpoint", "--router",
                                            emulator.url, "--api-key", "test-key", "-n", "4", "-c", "2"))
    worker = await start_worker(double)
    await worker.wait_ready()
    run = await run_task
    assert run.code == 0
    s = run.stats["vast:test-endpoint"]
    assert s["succeeded"] == 4 and s["cold_waits"] >= 2 and s["no_worker_ready_polls"] >= 2
    assert s["retries_by_reason"]["no worker ready"] == s["no_worker_ready_polls"]
    assert s["attempts"] == 4
    assert "| cold waits: requests / 'no worker ready' polls | " in run.report
