"""A real ComfyUI killed mid-prompt under `comfy-worker serve --local --comfyui-path`: the
caller gets a retriable 503, the supervisor restarts ComfyUI, the autoscaler is told
nothing, and the next request succeeds on the restarted ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=...] [COMFYUI_TEST_CACHE=...] \
        .venv/bin/python -m pytest tests/real/test_kill_restart.py -q

Skipped without COMFYUI_PATH (tests/real/conftest.py). Everything ComfyUI writes goes
under a temporary base (launcher.Layout), passed with COMFY_BRIDGE_COMFYUI_EXTRA_ARGS.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.real import graphs
from tests.real.launcher import Layout, comfy_python, ensure_checkpoints

pytestmark = pytest.mark.slow

_PID = re.compile(r"launched ComfyUI pid (\d+)")


class Serve:
    """`comfy-worker serve --local` as a subprocess: its printed URLs and its JSON log."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.stdout: list[str] = []
        self.router = self.comfyui = ""

    async def read_until(self, needle: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
            if not raw:
                raise AssertionError(f"serve exited before {needle!r}: {self.stdout[-10:]}\n{self.log()[-3000:]}")
            line = raw.decode(errors="replace").rstrip()
            self.stdout.append(line)
            if line.startswith("router emulator:"):
                self.router = line.split()[2]
            elif line.startswith("ComfyUI:"):
                self.comfyui = line.split()[1]
            if needle in line:
                return line

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def comfy_pids(self) -> list[int]:
        return [int(p) for p in _PID.findall(self.log())]


async def call(session: aiohttp.ClientSession, router: str, job: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(router + "/route/", json={"endpoint": "local", "api_key": "local", "cost": 1}) as r:
        auth = await r.json()
    if "url" not in auth:
        return 0, auth
    async with session.post(auth["url"] + "/generate/sync",
                            json={"auth_data": auth, "payload": {"input": job}}) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")


async def test_killed_comfyui_gives_503_then_restarts(tmp_path: Path):
    comfy_path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    python = comfy_python(comfy_path)
    layout = Layout(tmp_path / "base").create(ensure_checkpoints(python, comfy_path, ["sd15"]))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(graphs.weightless(batch=1)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "S3_"))}
    env.pop("PYTHONPATH", None)
    env.update({
        "COMFY_BRIDGE_COMFYUI_EXTRA_ARGS": shlex.join(
            layout.flags() + shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", ""))),
        "COMFY_BRIDGE_COMFYUI_PATH": str(layout.base),
        "COMFY_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "COMFY_WORKER_BENCHMARK_RUNS": "1",
        "COMFY_WORKER_BENCHMARK_CONCURRENCY": "1",
        "PYTHONUNBUFFERED": "1",
    })
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "serve", "--local", "--comfyui-path", str(comfy_path),
            "--comfyui-python", python, "--comfyui-port", "0", "--port", "0", "--router-port", "0",
            "--benchmark-workflow", str(bench), "--state-dir", str(tmp_path / "state"),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
        )
    serve = Serve(proc, log_path)
    try:
        await serve.read_until("ready: max_perf", 600)
        comfy_log = next((tmp_path / "state").glob("bench-*/comfyui.log")).read_text(errors="replace")
        assert "cvw_gc_freeze: froze" in comfy_log  # the supervised ComfyUI loaded the gc.freeze pack last
        [ready] = [json.loads(ln) for ln in serve.log().splitlines() if '"msg": "ready"' in ln]
        assert {"comfyui_up", "ready_check", "first_model_load", "benchmark", "ready"} <= set(ready["startup_s"])
        assert ready["benchmark"]["generations"] == 1  # max_perf from ComfyUI's timings: warm-up + 1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
            # Warm: the checkpoint loads once, so the killed prompt is killed while sampling.
            status, body = await call(session, serve.router, {"workflow_json": graphs.sd15_t2i(steps=1, seed=1)})
            assert status == 200, body
            [first_pid] = serve.comfy_pids()

            pending = asyncio.ensure_future(
                call(session, serve.router, {"workflow_json": graphs.sd15_t2i(steps=40, seed=2)}))
            deadline = time.monotonic() + 120
            while True:  # until ComfyUI runs it
                async with session.get(serve.comfyui + "/queue") as r:
                    if (await r.json())["queue_running"]:
                        break
                assert time.monotonic() < deadline and not pending.done(), "the prompt never ran"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            os.kill(first_pid, signal.SIGKILL)
            status, body = await asyncio.wait_for(pending, 60)
            assert status == 503, body
            assert body["error"]["retriable"] is True and body["error"]["type"] == "comfyui_unavailable"

            # A client retrying 503s, as the contract tells it to: served once ComfyUI is back.
            deadline = time.monotonic() + 600
            attempts = 0
            while True:
                attempts += 1
                status, body = await call(session, serve.router, {"workflow_json": graphs.sd15_t2i(steps=1, seed=3)})
                if status == 200 or time.monotonic() > deadline:
                    break
                assert status in (0, 503), body
                await asyncio.sleep(1.0)
            assert status == 200, body
            assert body["output"] and body["output"][0]["mimetype"] == "image/png"
            pids = serve.comfy_pids()
            assert len(pids) == 2 and pids[1] != first_pid
            async with session.get(serve.router + "/reports") as r:
                reports = (await r.json())["worker_status"]
            assert reports and all(not rep.get("error_msg") for rep in reports)
            print(f"\nkilled ComfyUI pid {first_pid}: caller got a retriable 503; "
                  f"next request OK after {attempts} attempt(s) on pid {pids[1]}")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for pid in serve.comfy_pids():  # never leave a ComfyUI behind (ours: it runs in COMFYUI_PATH)
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == comfy_path:
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    assert proc.returncode == 0, serve.log()[-3000:]
