"""What /generate/stream costs next to /generate/sync, and how soon its first event comes.

Starts the ComfyUI double and the bridge (`comfy-worker bridge`) as subprocesses, then
alternates sync and stream requests for one inline 1024x1024 PNG (the same work, the
same load), printing each route's overhead (caller's wall time minus ComfyUI's own
execution time) and, for the stream, the time from POST to its first event (`queued`),
to `started`, and to the final `result`, with how many events came.

    .venv/bin/python bench/stream.py [--requests 100] [--exec-ms 200] [--size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from comfy_bridge.jobs import stream_protocol as sp
from common import free_port, pct, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def workflow(size: int, seed: int) -> dict:
    return {
        "1": {"class_type": "DoubleNoiseImage",
              "inputs": {"width": size, "height": size, "batch_size": 1, "seed": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


async def sync_one(session: aiohttp.ClientSession, url: str, graph: dict) -> float:
    t0 = time.perf_counter()
    async with session.post(url + "/generate/sync", json={"input": {"workflow_json": graph}}) as r:
        body = await r.json()
    wall = (time.perf_counter() - t0) * 1000
    assert r.status == 200, body
    return wall - body["timings"]["execution_ms"]


async def stream_one(session: aiohttp.ClientSession, url: str, graph: dict) -> dict[str, float]:
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    count = 0
    decoder = sp.SSEDecoder()
    async with session.post(url + sp.ROUTE, json={"input": {"workflow_json": graph}}) as r:
        assert r.status == 200 and r.content_type == sp.CONTENT_TYPE, await r.text()
        async for chunk in r.content.iter_any():
            for name, data in decoder.feed(chunk):
                count += 1
                marks.setdefault(name, (time.perf_counter() - t0) * 1000)
                if name == "result":
                    result = sp.parse(name, data)
    assert "result" in marks, marks
    return {"over": marks["result"] - result.response.timings.execution_ms, "first": min(marks.values()),
            "started": marks.get("started", float("nan")), "result": marks["result"], "events": count}


def line(values: list[float]) -> str:
    return f"p50 {pct(values, 50):.1f} ms  p95 {pct(values, 95):.1f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--exec-ms", type=float, default=200.0, help="the double's execution time per prompt")
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        cport, bport = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        double = subprocess.Popen(
            [sys.executable, "-m", "tests.comfy_double", "--port", str(cport), "--exec-ms", str(args.exec_ms),
             "--root", tmp], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bridge = subprocess.Popen(
            [str(Path(sys.executable).parent / "comfy-worker"), "bridge", "--comfyui-url", f"http://127.0.0.1:{cport}",
             "--comfyui-path", tmp, "--port", str(bport), "--log-level", "WARNING"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{bport}"
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, url + "/ready", [double, bridge])
                for i in range(5):  # warm-up
                    await sync_one(session, url, workflow(args.size, 10_000 + i))
                    await stream_one(session, url, workflow(args.size, 20_000 + i))
                sync_over, streamed = [], []
                for i in range(args.requests):
                    sync_over.append(await sync_one(session, url, workflow(args.size, 2 * i)))
                    streamed.append(await stream_one(session, url, workflow(args.size, 2 * i + 1)))
        finally:
            for p in (bridge, double):
                p.terminate()
                p.wait(10)
    n = args.requests
    print(f"{n} x sync and {n} x stream, interleaved; one inline {args.size}x{args.size} PNG; "
          f"ComfyUI double exec {args.exec_ms:g} ms")
    print(f"sync   overhead (wall - execution): {line(sync_over)}")
    print(f"stream overhead (result - execution): {line([s['over'] for s in streamed])}")
    print(f"stream first event {line([s['first'] for s in streamed])}"
          f"  | started {line([s['started'] for s in streamed])}"
          f"  | result {line([s['result'] for s in streamed])}  | events per request p50 "
          f"{pct([s['events'] for s in streamed], 50):.0f}")


if __name__ == "__main__":
    asyncio.run(main())
