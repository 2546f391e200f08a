"""`comfy-worker serve --local` and `comfy-worker call`: the laptop loop, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.worker.conftest import REPO, free_port, sd15_graph, stop_process

pytestmark = pytest.mark.timeout(90)


async def test_serve_local_then_call_saves_the_outputs(double, tmp_path: Path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sd15_graph()))
    port, router_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_", "REPORT_ADDR", "WORKER_", "CONTAINER_ID"))}
    env.update({"COMFY_WORKER_BENCHMARK_RUNS": "1", "COMFY_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
                "PYTHONUNBUFFERED": "1"})
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "serve", "--local", "--comfyui-url", double.url,
        "--port", str(port), "--router-port", str(router_port), "--benchmark-workflow", str(wf),
        "--state-dir", str(tmp_path / "state"),
        cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("comfy-worker call" in line for line in lines):
            assert time.monotonic() < deadline, lines
            raw = await asyncio.wait_for(serve.stdout.readline(), max(0.1, deadline - time.monotonic()))
            assert raw, f"serve exited: {lines}"
            lines.append(raw.decode().strip())
        assert any(line.startswith("ready: max_perf") for line in lines)
        router_url = f"http://127.0.0.1:{router_port}"
        assert any(router_url in line for line in lines)
        call_line = next(line for line in lines if "comfy-worker call" in line)
        assert f"--router {router_url}" in call_line

        out = tmp_path / "out"
        call = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "call", str(wf), "--router", router_url, "--out", str(out),
            "--request-id", "laptop-1", cwd=str(REPO), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(call.communicate(), 60)
        assert call.returncode == 0, stderr.decode()
        summary = json.loads(stdout)
        assert summary["id"] == "laptop-1" and summary["status"] == "success"
        assert "data" not in summary["output"][0]
        saved = out / summary["output"][0]["filename"]
        assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        os.killpg(serve.pid, signal.SIGTERM)  # a clean shutdown path
        assert await asyncio.wait_for(serve.wait(), 20) == 0
    finally:
        await stop_process(serve)


async def test_call_reports_a_failure_with_its_status(double, tmp_path: Path, emulator, start_worker):
    w = await start_worker(double)
    await w.wait_ready()
    graph = sd15_graph()
    graph["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    wf = tmp_path / "bad.json"
    wf.write_text(json.dumps({"input": {"workflow_json": graph}}))
    call = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "call", str(wf), "--router", emulator.url,
        "--endpoint", "test-endpoint", "--api-key", "test-key", "--out", str(tmp_path / "o"),
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(call.communicate(), 60)
    assert call.returncode == 1
    assert json.loads(stdout)["error"]["type"] == "missing_models"
    assert "HTTP 422" in stderr.decode()
