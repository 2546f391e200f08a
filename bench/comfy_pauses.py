"""ComfyUI's 10-second pause, step by step, with and without the gc.freeze pack.

    .venv/bin/python bench/comfy_pauses.py [--seconds 60] [--busy-seconds 20]
        [--comfyui-path /work/rt/ComfyUI --comfyui-python /work/rt/cvenv/bin/python]
        [--comfyui-url http://127.0.0.1:8188]   # probe one ComfyUI you run (no A/B)

Launches ComfyUI twice, the same way except for the pack (comfy_bridge/comfyui/gc_freeze.py:
an extra custom-node folder that loads last and calls gc.freeze()): the real one with
`--comfyui-path` (`--cpu`, weightless prompts), else the ComfyUI double
(tests/comfy_double) with `--gc-objects` live objects, which runs ComfyUI's collection for
real after prompts (tests/comfy_double/gc_pause.py). A direct client (one websocket,
its own prompt_ids) then
1. sends back-to-back prompts, one at a time, for `--seconds`, timing each step:
   POST /prompt (until answered), start (answered -> execution_start), end (ComfyUI's
   execution_success timestamp -> `executing: null` received) and GET /history;
2. keeps 4 prompts in flight for `--busy-seconds`: ComfyUI's busy fraction = the sum of
   its own execution times (execution_start -> execution_success timestamps) / wall.
Printed per run: each step's p50 / p99 / max in ms and how many took over 100 ms (the
stalls), the collector's pauses seen, and the busy fraction.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import free_port, pct, stop, wait_ready

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from comfy_bridge.comfyui import gc_freeze  # noqa: E402

STEPS = ("post", "start", "end", "history")
STALL_MS = 100.0


def graph(n: int, size: int) -> dict[str, Any]:
    """Weightless and never cached: the colour changes each prompt."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": n % 16777216}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pauses/p"}},
    }


@dataclass
class Prompt:
    pid: str
    sent: float = 0.0
    answered: float = 0.0
    started: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    finished: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Probe:
    """A minimal direct client: one websocket, events dispatched by prompt_id."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.client_id = f"pauses-{uuid.uuid4().hex[:8]}"
        self.prompts: dict[str, Prompt] = {}
        self.counter = itertools.count()
        self.size = 64

    async def __aenter__(self) -> "Probe":
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={self.client_id}",
                                                max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            data = m.get("data") or {}
            p = self.prompts.get(data.get("prompt_id"))
            if p is None:
                continue
            kind = m.get("type")
            if kind == "execution_start":
                p.started, p.start_ms = time.perf_counter(), data.get("timestamp")
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                p.end_ms = data.get("timestamp")
            elif kind == "executing" and data.get("node") is None and not p.finished.done():
                p.finished.set_result(time.perf_counter())

    async def run_one(self) -> tuple[Prompt, dict[str, float]]:
        p = Prompt(f"probe-{uuid.uuid4().hex}")
        self.prompts[p.pid] = p
        body = {"prompt": graph(next(self.counter), self.size), "client_id": self.client_id, "prompt_id": p.pid}
        p.sent = time.perf_counter()
        async with self.session.post(self.url + "/prompt", json=body) as r:
            await r.read()
            if r.status != 200:
                raise SystemExit(f"POST /prompt answered {r.status}")
        p.answered = time.perf_counter()
        done = await p.finished
        t = time.perf_counter()
        async with self.session.get(f"{self.url}/history/{p.pid}") as r:
            await r.read()
        history_ms = (time.perf_counter() - t) * 1000
        del self.prompts[p.pid]
        end_wall = time.time() * 1000 - (time.perf_counter() - done) * 1000  # `executing: null` in epoch ms
        return p, {
            "post": (p.answered - p.sent) * 1000,
            "start": ((p.started or done) - p.answered) * 1000,
            "end": max(0.0, end_wall - (p.end_ms or end_wall)),
            "history": history_ms,
        }


async def sequential(url: str, seconds: float) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    async with Probe(url) as probe:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            _, timing = await probe.run_one()
            for s in STEPS:
                steps[s].append(timing[s])
    return steps


async def busy(url: str, seconds: float, inflight: int = 4) -> float:
    """ComfyUI's own execution time over the wall time, `inflight` prompts always queued."""
    spans: list[tuple[int, int]] = []
    async with Probe(url) as probe:
        end = time.perf_counter() + seconds

        async def lane() -> None:
            while time.perf_counter() < end:
                p, _ = await probe.run_one()
                if p.start_ms and p.end_ms:
                    spans.append((p.start_ms, p.end_ms))

        await asyncio.gather(*(lane() for _ in range(inflight)))
    spans.sort()
    wall = spans[-1][1] - spans[0][0] if spans else 0
    return sum(e - s for s, e in spans) / wall if wall else float("nan")


async def launch(args: argparse.Namespace, freeze: bool, workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    extra = gc_freeze.launch_args(workdir) if freeze else []
    if args.comfyui_path:
        cmd = [args.comfyui_python or sys.executable, "main.py", *args.comfy_args.split(), "--listen", "127.0.0.1",
               "--port", str(port), "--disable-auto-launch", "--output-directory", str(workdir / "output"), *extra]
        cwd = str(args.comfyui_path)
    else:
        cmd = [sys.executable, "-m", "tests.comfy_double", "--port", str(port), "--root", str(workdir / "root"),
               "--exec-ms", str(args.exec_ms), "--gc-objects", str(args.gc_objects), *extra]
        cwd = str(REPO)
    log = open(workdir / "comfyui.log", "wb")
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        await wait_ready(s, url + "/system_stats", [], timeout=args.start_timeout_s)
    return proc, url


RESULTS: dict[str, dict[str, float]] = {}  # --json-out: per run, the figures printed


def report(name: str, steps: dict[str, list[float]], busy_fraction: float, log_path: Path | None) -> None:
    n = len(steps["post"])
    RESULTS[name.split()[0]] = {"prompts": n, "busy_4_inflight": busy_fraction,
                                "stalls_over_100ms": sum(max(steps[s][i] for s in STEPS) > STALL_MS for i in range(n)),
                                "max_step_ms": max(max(v) for v in steps.values()),
                                **{f"{s}_p99_ms": pct(steps[s], 99) for s in STEPS}}
    print(f"\n{name}: {n} prompts one at a time")
    print(f"  {'step':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'>100 ms':>8}")
    for s in STEPS:
        v = steps[s]
        print(f"  {s:<8} {pct(v, 50):8.1f} {pct(v, 99):8.1f} {max(v):8.1f} {sum(x > STALL_MS for x in v):8d}")
    worst = [max(steps[s][i] for s in STEPS) for i in range(n)]
    print(f"  prompts with a step over {STALL_MS:.0f} ms: {sum(w > STALL_MS for w in worst)}")
    print(f"  busy fraction, 4 in flight: {busy_fraction:.3f}")
    if log_path is not None:
        frozen = [ln for ln in log_path.read_text(errors="replace").splitlines() if "cvw_gc_freeze: froze" in ln]
        print(f"  pack: {frozen[-1].strip() if frozen else 'not loaded'}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--busy-seconds", type=float, default=20)
    p.add_argument("--comfyui-path", type=Path)
    p.add_argument("--comfyui-python")
    p.add_argument("--comfyui-url", help="probe this ComfyUI only")
    p.add_argument("--gc-objects", type=int, default=2_000_000,
                   help="the double's live objects: 2,000,000 small lists take ComfyUI's 250-530 ms to collect here "
                        "(ComfyUI's ~532,000 objects are bigger)")
    p.add_argument("--exec-ms", type=float, default=20.0, help="the double's execution time per prompt")
    p.add_argument("--start-timeout-s", type=float, default=180)
    p.add_argument("--only", choices=("stock", "frozen"), help="one of the two runs")
    p.add_argument("--comfy-args", default="--cpu", help="flags for the launched ComfyUI (default --cpu; '' on a GPU)")
    p.add_argument("--json-out", type=Path, help="also write the figures here")
    args = p.parse_args()
    print(f"comfy_pauses: {'ComfyUI at ' + args.comfyui_url if args.comfyui_url else args.comfyui_path or 'the ComfyUI double'}"
          f", {args.seconds:.0f} s sequential + {args.busy_seconds:.0f} s with 4 in flight each")
    if args.comfyui_url:
        steps = await sequential(args.comfyui_url, args.seconds)
        report("external", steps, await busy(args.comfyui_url, args.busy_seconds), None)
        return
    for name, freeze in (("stock", False), ("frozen", True)):
        if args.only and args.only != name:
            continue
        with tempfile.TemporaryDirectory(prefix=f"pauses-{name}-") as tmp:
            proc, url = await launch(args, freeze, Path(tmp))
            try:
                steps = await sequential(url, args.seconds)
                fraction = await busy(url, args.busy_seconds)
            finally:
                await stop(proc)
            report(f"{name} ({'with' if freeze else 'without'} the gc.freeze pack)", steps, fraction,
                   Path(tmp) / "comfyui.log")
    if args.json_out:
        args.json_out.write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
