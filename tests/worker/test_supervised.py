"""`serve --local --comfyui-path`: ComfyUI as a supervised child (here the double behind a
ComfyUI-shaped main.py). A crash that the supervisor restarts is not an error for the
autoscaler; a ComfyUI that keeps crashing is, with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.worker.conftest import CKPT, REPO, free_port, sd15_graph, stop_process, until
from worker.client import WorkerClient
from worker.emulator import RouterEmulator

pytestmark = pytest.mark.timeout(90)

MAIN_PY = """
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(here, "crash")):
    sys.exit("Traceback (most recent call last):\\nRuntimeError: CUDA error: no kernel image is available")
with open(os.path.join(here, "pid"), "w") as f:
    f.write(str(os.getpid()))
sys.path.insert(0, {repo!r})
from tests.comfy_double.__main__ import main
args = [a for a in sys.argv[1:] if a not in ("--disable-auto-launch", "--cpu")]
sys.exit(main(args + ["--root", here, "--exec-ms", "30", "--models", {models!r}]))
"""


async def test_restart_is_not_an_error_and_giving_up_is(tmp_path: Path):
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text(MAIN_PY.format(repo=str(REPO), models=json.dumps({"checkpoints": [CKPT]})))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sd15_graph()))

    emulator = RouterEmulator(endpoint="test-endpoint", api_key="test-key")
    await emulator.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_"))}
    env.update({
        "CONTAINER_ID": "7", "REPORT_ADDR": emulator.url, "PUBLIC_IPADDR": "127.0.0.1",
        "WORKER_PORT": str(port), f"VAST_TCP_PORT_{port}": str(port), "WORKER_HTTP_PORT": str(free_port()),
        "COMFY_WORKER_BENCHMARK_RUNS": "1", "COMFY_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONUNBUFFERED": "1",
    })
    log = open(tmp_path / "worker.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "serve", "--comfyui-path", str(comfy), "--comfyui-python", sys.executable,
        "--comfyui-port", "0", "--host", "127.0.0.1", "--benchmark-workflow", str(wf),
        "--state-dir", str(tmp_path / "state"),
        cwd=str(tmp_path), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    try:
        view = await emulator.wait_for(lambda: next((w for w in emulator.workers.values() if w.ready or w.error_msg), None), 60)
        assert view.ready, (view, (tmp_path / "worker.log").read_text()[-3000:])

        # 1. ComfyUI dies once: the supervisor restarts it; the worker keeps serving, no error.
        first_pid = int((comfy / "pid").read_text())
        os.kill(first_pid, signal.SIGKILL)
        await until(lambda: (comfy / "pid").read_text() != str(first_pid), 30, "ComfyUI to be restarted")
        async with WorkerClient("test-endpoint", "test-key", router_url=emulator.url,
                                backoff_base_s=0.05, backoff_max_s=0.5) as client:
            result = await client.generate({"workflow_json": sd15_graph(seed=5)}, deadline_s=60)
        assert result.status == "success"
        assert all(r["error_msg"] == "" for r in emulator.reports)

        # 2. It keeps crashing at start: the supervisor gives up, the autoscaler is told why.
        (comfy / "crash").write_text("")
        os.kill(int((comfy / "pid").read_text()), signal.SIGKILL)
        await emulator.wait_for(lambda: any(r["error_msg"] for r in emulator.reports), 60)
        error = next(r["error_msg"] for r in emulator.reports if r["error_msg"])
        assert "ComfyUI" in error
    finally:
        await stop_process(proc)
        log.close()
        await emulator.stop()
