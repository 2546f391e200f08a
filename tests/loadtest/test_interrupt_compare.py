"""Ctrl-C during a run still writes the report; `--compare` puts two runs side by side."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from PIL import Image

from tests.worker.conftest import REPO, until


async def test_ctrl_c_still_writes_the_report(make_comfy_double, make_bridge, workflow_file, tmp_path: Path):
    double = await make_comfy_double(exec_ms=150)
    bridge = await make_bridge(double.url)
    out = tmp_path / "interrupted"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "loadtest", str(workflow_file), "--target", f"bridge:{bridge.url}",
        "-n", "1000", "-c", "2", "--out", str(out), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        results = out / "results.jsonl"
        await until(lambda: results.exists() and len(results.read_text().splitlines()) >= 3, timeout=60,
                    what="three answers")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, stderr.decode()[-2000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] is True and meta["ended"] >= meta["started"]
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())[f"bridge:{bridge.url}"]
    assert stats["requests"] == len(lines) < 1000
    assert stats["succeeded"] == sum(r["status"] == "success" for r in lines) >= 3
    assert stats["cancelled"] == sum(r["status"] == "cancelled" for r in lines)
    assert "interrupted (Ctrl-C)" in (out / "report.md").read_text()
    assert b"report: " in stdout


def _fake_run(folder: Path, label: str, latencies: list[float], exec_ms: float) -> None:
    from worker.loadtest.protocol import RequestRecord, RunMeta, TargetMeta, append_record, write_meta

    folder.mkdir()
    write_meta(folder, RunMeta(label=label, workflow="w.json", requests=len(latencies), mode="closed", concurrency=1,
                               started=1000.0, ended=1100.0,
                               targets=[TargetMeta(name="vast:ep", kind="vast", gpu_price_per_hour=2.0)]))
    t = 1000.0
    for i, lat in enumerate(latencies):
        append_record(folder / "results.jsonl", RequestRecord(
            status="success", target="vast:ep", index=i, request_id=f"r{i}", start=t, end=t + lat / 1000,
            latency_ms=lat, worker="w1", timings={"execution_ms": exec_ms}, http_status=200))
        t += lat / 1000


async def test_compare_two_runs(tmp_path: Path, loadtest):
    _fake_run(tmp_path / "before", "4090", [1000.0, 1200.0, 1400.0, 3000.0], exec_ms=900.0)
    _fake_run(tmp_path / "after", "h100", [500.0, 600.0, 700.0], exec_ms=400.0)
    run = await loadtest("--compare", str(tmp_path / "before"), str(tmp_path / "after"), out="cmp")
    assert run.code == 0
    before, after = run.stats["4090: vast:ep"], run.stats["h100: vast:ep"]
    assert before["latency_ms"]["p50"] == 1300.0 and after["latency_ms"]["p50"] == 600.0
    # $ per 1,000 at GPU time: 2 $/h / 3600 x 0.9 s x 1000 = $0.50; at fleet time 6.6 s / 4 images.
    assert abs(before["usd_per_1000_gpu"] - 0.5) < 1e-9
    assert abs(before["usd_per_1000_fleet"] - 2.0 / 3600 * 6.6 / 4 * 1000) < 1e-9
    assert "|  | 4090: vast:ep | h100: vast:ep |" in run.report
    assert "| latency p50 (ms) | 1,300.0 | 600.0 |" in run.report
    for png in ("latency_hist.png", "latency_time.png", "throughput.png", "per_worker.png"):
        with Image.open(run.out / png) as img:
            img.verify()


async def test_compare_names_a_folder_that_is_not_a_run(tmp_path: Path, loadtest, capsys):
    (tmp_path / "empty").mkdir()
    _fake_run(tmp_path / "ok", "a", [1.0], exec_ms=1.0)
    args_out = tmp_path / "cmp"
    from worker.cli import build_parser
    from worker.loadtest.cli import run_async

    args = build_parser(["loadtest"]).parse_args(
        ["loadtest", "--compare", str(tmp_path / "empty"), str(tmp_path / "ok"), "--out", str(args_out)])
    assert await run_async(args) == 2
    assert "is not a load test run (run.json and results.jsonl expected)" in capsys.readouterr().err
