"""runpod: and bridge: targets side by side in one run: the RunPod stand-in
(runpod_standin.py) and a bridge reached directly, both in front of the ComfyUI double.
RunPod's 429 is retried, a job still queued after /runsync is polled to its end, a failed
job is counted as such; the prices given per target give the dollars."""

from __future__ import annotations

import pytest

from tests.comfy_double import ExecError
from tests.loadtest.runpod_standin import RunPodStandIn
from tests.support import serve_app

N = 12


@pytest.fixture
async def platforms(make_comfy_double, make_bridge):
    double = await make_comfy_double(exec_ms=20)
    bridge = await make_bridge(double.url)
    standin = RunPodStandIn("ep123", "rp-key", bridge.url, bridge.session)
    runners: list = []
    port = await serve_app(standin.app(), runners)
    yield double, bridge, standin, f"http://127.0.0.1:{port}"
    for r in runners:
        await r.cleanup()


async def test_runpod_and_bridge_side_by_side(platforms, loadtest, workflow_file, monkeypatch):
    double, bridge, standin, runpod_url = platforms
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-key")
    standin.rate_limit, standin.queue_next = 1, 2
    double.faults.exec_errors.append(ExecError(exception_type="RuntimeError", message="injected"))

    run = await loadtest(str(workflow_file), "--target", "runpod:ep123", "--target", f"bridge:{bridge.url}",
                         "--runpod-url", runpod_url, "-n", str(N), "-c", "3",
                         "--gpu-price-per-hour", "runpod:ep123=0.69", "--gpu-price-per-hour", "0.5")

    rp = [r for r in run.records if r["target"] == "runpod:ep123"]
    br = [r for r in run.records if r["target"].startswith("bridge:")]
    assert len(rp) == N and len(br) == N
    # RunPod ran first: its one failed job is the injected error; the bridge's run is clean.
    assert [r["error_type"] for r in rp if r["status"] == "failed"] == ["runpod_failed"]
    assert all(r["status"] == "success" for r in br)
    assert sorted(x for r in rp for x in r["retried_on"]) == ["429"]
    assert standin.polls >= 2 and {r["worker"] for r in rp} == {"standin-worker-1"}
    ok = [r for r in rp if r["status"] == "success"]
    assert all(r["output_bytes"] > 0 and r["outputs"] == 1 for r in ok)

    s_rp, s_br = run.stats["runpod:ep123"], run.stats[f"bridge:{bridge.url}"]
    assert (s_rp["succeeded"], s_rp["failed"]) == (N - 1, 1)
    assert s_rp["price_per_hour"] == 0.69 and s_br["price_per_hour"] == 0.5
    gpu = sum(r["timings"]["execution_ms"] for r in ok) / 1000
    assert s_rp["usd_per_1000_gpu"] == pytest.approx(0.69 / 3600 * gpu / len(ok) * 1000)
    assert f"|  | runpod:ep123 | bridge:{bridge.url} |" in run.report
    assert "RunPod | $0.60 - $1.60 | runpod:ep123: $" in run.report
    assert run.code == 1


async def test_wrong_runpod_key_is_a_clear_failure(platforms, loadtest, workflow_file, monkeypatch):
    _, _, _, runpod_url = platforms
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    run = await loadtest(str(workflow_file), "--target", "runpod:ep123", "--runpod-url", runpod_url, "-n", "2")
    assert {(r["http_status"], r["error_type"], r["retriable"]) for r in run.records} == {(401, "http_401", False)}


async def test_open_loop_sends_without_waiting_for_answers(make_comfy_double, make_bridge, loadtest, workflow_file):
    double = await make_comfy_double(exec_ms=100)
    bridge = await make_bridge(double.url)
    run = await loadtest(str(workflow_file), "--target", f"bridge:{bridge.url}", "-n", "15", "--rate", "40",
                         "--seed", "3")
    assert run.code == 0 and run.meta["mode"] == "open" and run.meta["rate_per_s"] == 40
    recs = sorted(run.records, key=lambda r: r["start"])
    assert len(recs) == 15
    # Poisson arrivals at 40/s against ~100 ms answers: later requests go out before earlier ones end.
    assert any(b["start"] < a["end"] for a, b in zip(recs, recs[1:]))
    assert run.stats[f"bridge:{bridge.url}"]["succeeded"] == 15
