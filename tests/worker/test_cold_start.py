"""A measured cold start: the timeline in the `ready` line and /metrics, and max_perf from
ComfyUI's own execution timings (warm-up + runs x concurrency generations, cached)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from comfy_bridge import observability as obs
from worker.benchmark import BENCHMARK_FILE, MEASURE_FILE, Measurement
from worker.cold_start import Timeline
from worker.lifecycle import WorkerLifecycle
from worker.settings import WorkerSettings


def _lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


async def test_ready_line_and_metrics_carry_the_timeline(start_worker, double):
    w = await start_worker(double)  # COMFY_WORKER_BENCHMARK_RUNS=1, _CONCURRENCY=2 (conftest)
    view = await w.wait_ready()
    lines = _lines(w.log_text())
    [ready] = [x for x in lines if x.get("msg") == "ready"]
    phases = ready["startup_s"]
    assert list(phases) == ["ready_check", "first_model_load", "benchmark", "ready"]  # external ComfyUI
    assert sorted(phases.values()) == list(phases.values())
    bench = ready["benchmark"]
    assert bench["generations"] == 2 and bench["failures"] == 0 and bench["warmup_s"] > 0
    assert double.prompts_executed == 3  # the warm-up and two measured: no framework rounds on top
    assert view.max_perf == pytest.approx(bench["units_per_s"], rel=1e-3)
    state = next(w.cwd.glob("state/bench-*"))
    assert float((state / BENCHMARK_FILE).read_text()) == pytest.approx(view.max_perf)

    [serving] = [x for x in lines if x.get("msg") == "pyworker serving"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{serving['bridge_port']}/metrics") as r:
            text = await r.text()
    assert 'comfy_bridge_startup_seconds{phase="ready"}' in text
    assert 'comfy_bridge_startup_seconds{phase="benchmark"}' in text


async def test_cached_benchmark_is_reused_and_teaches_the_units(tmp_path: Path, monkeypatch) -> None:
    calls, measured = [], []
    m = Measurement(units_per_s=10.0, seconds_per_unit=0.1, generations=1, execution_s=[2.1], warmup_s=3.0, failures=0)

    async def run(session, on_warmup=None):
        calls.append(1)
        on_warmup()
        return m

    def make() -> WorkerLifecycle:
        lc = WorkerLifecycle(WorkerSettings(), bridge_url="http://127.0.0.1:9", comfyui_url="http://127.0.0.1:9",
                             benchmark_run=run, on_measured=measured.append, state_dir=tmp_path,
                             timeline=Timeline(origin=1.0))
        lc._session = aiohttp.ClientSession()
        return lc

    for _ in range(2):  # a restart of the same worker (Vast's stopped-then-started workers)
        lc = make()
        try:
            await lc._benchmark()
        finally:
            await lc._session.close()
    assert calls == [1]  # measured once
    assert float((tmp_path / BENCHMARK_FILE).read_text()) == 10.0
    assert Measurement(**json.loads((tmp_path / MEASURE_FILE).read_text())) == m
    assert [x.seconds_per_unit for x in measured] == [0.1, 0.1]
    assert lc.timeline.details["benchmark"]["cached"] is True


def test_timeline_starts_at_the_entrypoint_and_feeds_metrics(monkeypatch) -> None:
    monkeypatch.setenv("COMFY_WORKER_T0", "1000.0")
    monkeypatch.setenv("COMFY_WORKER_PROVISIONED_AT", "1001.5")
    metrics = obs.Metrics()
    t = Timeline(on_mark=metrics.startup_phase)
    assert t.origin == 1000.0 and t.marks == {"provision": 1.5}
    assert metrics.value("comfy_bridge_startup_seconds", phase="provision") == 1.5
    monkeypatch.delenv("COMFY_WORKER_T0")
    assert 0 <= Timeline().mark("x") < 600  # from this process's start (/proc)
