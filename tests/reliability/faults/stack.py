"""A full local worker stack in subprocesses, shared by the fault tests of one module.

    router emulator (python -m worker.emulator)      <- /worker_status/ reports
    comfy-worker serve --comfyui-path ROOT           (PyWorker framework + bridge)
        └── ROOT/main.py: the ComfyUI double as a supervised child (comfy_main.py)

Everything is a subprocess, so module-scoped setup needs no shared event loop; tests
talk to it over HTTP from their own loop. Faults are scripted through the double's
control port; the process is killed or frozen with signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.reliability.faults.comfy_main import write_main
from tests.support import free_port, vast_env

REPO = Path(__file__).resolve().parents[3]
ENDPOINT = "faults"
API_KEY = "faults-key"
READY_TIMEOUT_S = 60.0




def save_graph(color: int = 255, width: int = 64, height: int = 48, batch: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fault"}},
    }


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


@dataclass
class Stack:
    root: Path                      # the "ComfyUI" folder (double root, main.py, pid, control.port)
    emulator_url: str
    worker_url: str
    worker: subprocess.Popen[bytes]
    emulator: subprocess.Popen[bytes]
    log_path: Path
    _color: int = field(default=0)

    # ---- ComfyUI (the double's process) ---------------------------------------------

    def comfy_pid(self) -> int:
        return int((self.root / "pid").read_text())

    def control_url(self) -> str:
        return f"http://127.0.0.1:{(self.root / 'control.port').read_text().strip()}"

    async def fault(self, session: aiohttp.ClientSession, call: str, **kwargs: Any) -> None:
        async with session.post(self.control_url() + "/fault", json={"call": call, "kwargs": kwargs}) as r:
            assert r.status == 200, await r.text()

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.control_url() + "/state") as r:
            return await r.json()

    # ---- the autoscaler's view ---------------------------------------------------------

    async def reports(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(self.emulator_url + "/reports") as r:
            return (await r.json())["worker_status"]

    async def told_since(self, session: aiohttp.ClientSession, since: int) -> str:
        """The first non-empty error_msg reported after report number `since`, or "nothing"."""
        for report in (await self.reports(session))[since:]:
            if report.get("error_msg"):
                return str(report["error_msg"])
        return "nothing"

    async def wait_error_msg(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for report in await self.reports(session):
                if report.get("error_msg"):
                    return str(report["error_msg"])
            await _sleep(0.1)
        raise AssertionError(f"no error_msg reported in {timeout}s; log:\n{self.log_tail()}")

    # ---- calling it as a backend does ----------------------------------------------------

    def next_color(self) -> int:
        """A fresh colour per request so ComfyUI's cache never answers instead of running."""
        self._color = (self._color + 1) % 256
        return self._color

    def job(self, **fields: Any) -> dict[str, Any]:
        return {"workflow_json": save_graph(color=self.next_color()), **fields}

    async def route(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        body = {"endpoint": ENDPOINT, "api_key": API_KEY, "cost": 1.0}
        async with session.post(self.emulator_url + "/route/", json=body) as r:
            auth = await r.json()
        return auth if auth.get("url") else None

    async def call(self, session: aiohttp.ClientSession, job: dict[str, Any],
                   timeout: float = 60.0) -> tuple[int, Any]:
        """One routed, signed call; (status, JSON body or text). Status 0: no worker ready."""
        auth = await self.route(session)
        if auth is None:
            return 0, {"error": "no worker ready (the router has none to route to)"}
        payload = {"auth_data": auth, "payload": {"input": job}}
        async with session.post(auth["url"] + "/generate/sync", json=payload,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.read()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw.decode(errors="replace")

    async def next_ok(self, session: aiohttp.ClientSession, within_s: float = 30.0) -> bool:
        """Whether a plain request succeeds, retrying 503/429 (and no worker) like a client."""
        deadline = time.monotonic() + within_s
        while True:
            status, body = await self.call(session, self.job())
            if status == 200:
                return True
            retriable = status in (0, 429) or (
                status == 503 and isinstance(body, dict) and body.get("error", {}).get("retriable")
            )
            if not retriable or time.monotonic() > deadline:
                return False
            await _sleep(0.2)

    # ---- lifetime -----------------------------------------------------------------------

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        _stop(self.worker, 15)
        try:  # the worker stops ComfyUI on SIGTERM; make sure of it whatever happened
            pid = self.comfy_pid()
            if Path(f"/proc/{pid}/cwd").resolve() == self.root.resolve():  # still ours, not a reused pid
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        _stop(self.emulator, 5)


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def start_stack(tmp: Path, env: dict[str, str] | None = None, exec_ms: float = 30.0,
                args: list[str] | None = None) -> Stack:
    """Start the emulator and a worker whose ComfyUI is the double; return once it is ready."""
    tmp.mkdir(parents=True, exist_ok=True)
    root = tmp / "ComfyUI"
    write_main(root, REPO, exec_ms=exec_ms)
    bench = tmp / "benchmark.json"
    bench.write_text(json.dumps(save_graph()))

    emu_port = free_port()
    emu_log = open(tmp / "emulator.log", "wb")
    emulator = subprocess.Popen(
        [sys.executable, "-m", "worker.emulator", "--port", str(emu_port),
         "--endpoint", ENDPOINT, "--api-key", API_KEY],
        cwd=REPO, stdout=emu_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    emu_log.close()
    emulator_url = f"http://127.0.0.1:{emu_port}"

    port = free_port()
    child_env = vast_env(dict(os.environ), report_addr=emulator_url, port=port, container_id=42)
    child_env.update({
        "COMFY_WORKER_BENCHMARK_RUNS": "1",
        "COMFY_WORKER_BENCHMARK_CONCURRENCY": "1",
        "COMFY_BRIDGE_SPOOL_DIR": str(tmp / "spool"),
        "COMFY_BRIDGE_WATCHDOG_SILENCE_S": "1.0",
        "COMFY_BRIDGE_ALLOW_PRIVATE_URLS": "true",
        "COMFY_BRIDGE_WEBHOOK_RETRIES": "1",
        "COMFY_BRIDGE_WEBHOOK_RETRY_BACKOFF_S": "0.05",
        "COMFY_BRIDGE_WEBHOOK_TIMEOUT_S": "2",
        "S3_RETRIES": "0",
        "PYTHONUNBUFFERED": "1",
    })
    child_env.update(env or {})
    log_path = tmp / "worker.log"
    with open(log_path, "wb") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", "--comfyui-path", str(root),
             "--comfyui-python", sys.executable, "--comfyui-port", "0", "--host", "127.0.0.1",
             "--benchmark-workflow", str(bench), "--state-dir", str(tmp / "state"), *(args or [])],
            cwd=tmp, env=child_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack = Stack(root, emulator_url, f"http://127.0.0.1:{port}", worker, emulator, log_path)
    try:
        _wait_ready(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.worker.poll() is not None:
            raise RuntimeError(f"worker exited with {stack.worker.returncode}:\n{stack.log_tail()}")
        try:
            workers = _get_json(stack.emulator_url + "/workers")
        except OSError:
            workers = []
        for w in workers:
            if w.get("error_msg"):
                raise RuntimeError(f"worker errored at start: {w['error_msg']}\n{stack.log_tail()}")
            if w.get("ready"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready in {READY_TIMEOUT_S}s:\n{stack.log_tail()}")
