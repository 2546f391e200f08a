"""Fixtures of the worker tests: the router emulator in this process, the ComfyUI double in
this process, and the real PyWorker (`comfy-worker serve`, the `vastai` framework
unmodified) in a subprocess whose environment points at the emulator, as Vast's would.

Each worker runs with its own temporary working directory (the framework caches its
benchmark in `.has_benchmark` there). Everything waits on events: the emulator's
reports, the double's recorded requests; never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.comfy_double import ComfyDouble
from tests.support import free_port, vast_env
from worker.emulator import RouterEmulator, WorkerView

REPO = Path(__file__).resolve().parents[2]
CKPT = "sd15.safetensors"




def sd15_graph(steps: int = 20, sampler: str = "euler", width: int = 128, height: int = 128,
               batch: int = 1, seed: int = 1) -> dict[str, Any]:
    """A text-to-image graph the double runs; units = 1 + steps x w x h / 1024^2 x batch x calls x 1.65."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler, "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "test"}},
    }


# sd15_graph() defaults (small images keep the double fast), x the SD1.5 family factor
# (worker/model_family.py: the checkpoint is named like one).
SD15_UNITS = round(1 + 20 * 128 * 128 / 1024**2 * 1.65, 4)  # units are rounded to 4 places


@dataclass
class WorkerProc:
    """A running `comfy-worker serve` subprocess and how to reach it."""

    proc: asyncio.subprocess.Process
    url: str
    port: int
    log_path: Path
    emulator: RouterEmulator
    cwd: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def view(self) -> WorkerView | None:
        return next(iter(self.emulator.workers.values()), None)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 60.0) -> WorkerView:
        """Until the emulator has a loaded report (fails early, with the log, if it errored)."""
        try:
            view = await self.emulator.wait_for(
                lambda: (v := self.view()) is not None and (v.ready or v.error_msg) and v, timeout
            )
        except TimeoutError as e:
            raise AssertionError(f"worker not ready in {timeout}s; log:\n{self.log_text()[-4000:]}") from e
        assert not view.error_msg, f"worker errored: {view.error_msg}\n{self.log_text()[-4000:]}"
        return view

    async def wait_report(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        try:
            return await self.emulator.wait_for(
                lambda: next((r for r in self.emulator.reports if predicate(r)), None), timeout
            )
        except TimeoutError as e:
            raise AssertionError(
                f"no such report in {timeout}s; last: {self.emulator.reports[-3:]}\n{self.log_text()[-3000:]}"
            ) from e

    async def wait_deleted(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        try:
            return await self.emulator.wait_for(
                lambda: next((d for d in self.emulator.deleted if predicate(d)), None), timeout
            )
        except TimeoutError as e:
            raise AssertionError(f"no such /delete_requests/ entry in {timeout}s: {self.emulator.deleted}") from e

    async def post(self, body: Any, *, session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with session.post(f"{self.url}/generate/sync", json=body) as r:
            return r.status, await r.read()

    def signed(self, job: dict[str, Any], cost: float = SD15_UNITS) -> dict[str, Any]:
        """A request body with auth_data signed by the emulator, as /route/ would give it."""
        return {"auth_data": self.emulator.auth_data(self.url, cost=cost), "payload": {"input": job}}


@pytest.fixture
async def emulator() -> AsyncIterator[RouterEmulator]:
    emu = RouterEmulator(endpoint="test-endpoint", api_key="test-key")
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def double(make_comfy_double) -> ComfyDouble:
    """The double the workers talk to (set up before them, so torn down after them:
    a double closed under a live bridge waits on its websocket)."""
    return await make_comfy_double(exec_ms=30, models={"checkpoints": [CKPT]})


@pytest.fixture
async def start_worker(
    emulator: RouterEmulator, double: ComfyDouble, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[WorkerProc]]]:
    """`await start_worker(double, **COMFY_WORKER_settings)`: a PyWorker serving through `double`."""
    procs: list[WorkerProc] = []

    async def start(double: ComfyDouble | None, *, comfyui_url: str | None = None,
                    benchmark: dict[str, Any] | None = None, args: list[str] | None = None,
                    public_port: int | None = None, **settings: Any) -> WorkerProc:
        n = len(procs)
        cwd = tmp_path / f"worker{n}"
        cwd.mkdir()
        bench = cwd / "benchmark.json"
        bench.write_text(json.dumps(benchmark or sd15_graph()))
        port = free_port()
        env = vast_env(dict(os.environ), report_addr=emulator.url, port=port, container_id=100 + n)
        if public_port is not None:  # Vast's port mapping: the worker is reached (and reports itself) there
            env[f"VAST_TCP_PORT_{port}"] = str(public_port)
        env.update({
            "COMFY_WORKER_STATE_DIR": str(cwd / "state"),
            "COMFY_WORKER_BENCHMARK_WORKFLOW": str(bench),
            "COMFY_WORKER_BENCHMARK_RUNS": "1",
            "COMFY_WORKER_BENCHMARK_CONCURRENCY": "2",
            "COMFY_BRIDGE_SPOOL_DIR": str(cwd / "spool"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"COMFY_WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        url = comfyui_url or (double.url if double is not None else "http://127.0.0.1:9")
        log_path = cwd / "worker.log"
        with open(log_path, "wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "serve", "--comfyui-url", url, "--host", "127.0.0.1",
                *(args or []),
                cwd=str(cwd), env=env, stdout=fh, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        wp = WorkerProc(proc, f"http://127.0.0.1:{port}", port, log_path, emulator, cwd)
        procs.append(wp)
        return wp

    yield start
    for wp in procs:
        await stop_process(wp.proc)


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()


async def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll a cheap in-process predicate (e.g. the double's recorded requests), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
