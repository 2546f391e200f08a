"""What the bridge adds on top of ComfyUI's own execution, for one inline 1024x1024 PNG.

Starts the ComfyUI double and the bridge (`comfy-worker bridge`) as subprocesses, so the
RSS printed is the bridge's own, then sends N requests at concurrency 1 and 8:

    overhead = caller's wall time - timings.execution_ms (ComfyUI's execution_start to
               execution_success, from the response)

At concurrency 8 the overhead includes waiting in ComfyUI's queue (it runs one prompt at
a time), so `minus queue` is printed too. Target on a 2-core box: p50 <= 10 ms and
p99 <= 30 ms at concurrency 1.

    .venv/bin/python bench/bridge_overhead.py [--requests 200] [--exec-ms 0] [--size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workflow(size: int) -> dict:
    return {
        "1": {"class_type": "DoubleNoiseImage", "inputs": {"width": size, "height": size, "batch_size": 1, "seed": 7}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def wait_ready(session: aiohttp.ClientSession, url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args} exited with {p.returncode}")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout}s")


async def one(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, float, float, dict]:
    t0 = time.perf_counter()
    async with session.post(url, json=body) as r:
        raw = await r.read()
        wall = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            raise SystemExit(f"request failed {r.status}: {raw[:300]!r}")
    data = json.loads(raw)
    out = data["output"]
    assert out and out[0]["data"] and out[0]["mimetype"] == "image/png", out
    t = data["timings"]
    return wall, t["execution_ms"], t["queued_ms"], {**t, "wall_ms": wall}


async def level(session: aiohttp.ClientSession, url: str, size: int, n: int, conc: int) -> None:
    results: list[tuple[float, float, float, dict]] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            body = {"input": {"request_id": f"bench-{conc}-{i}", "workflow_json": workflow(size)}}
            results.append(await one(session, url, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    over = [w - e for w, e, _, _ in results]
    over_nq = [w - e - q for w, e, q, _ in results]
    execs = [e for _, e, _, _ in results]
    t = [r[3] for r in results]
    print(
        f"concurrency {conc}: n={n}  overhead p50 {pct(over, 50):.1f} ms  p95 {pct(over, 95):.1f} ms  "
        f"p99 {pct(over, 99):.1f} ms  | minus queue p50 {pct(over_nq, 50):.1f} p99 {pct(over_nq, 99):.1f} ms"
        f"  | ComfyUI exec p50 {pct(execs, 50):.1f} ms  | {n / elapsed:.1f} req/s"
    )
    # Where it goes (p50s): submit->execution_start, files->encoded, the rest inside the
    # bridge (checks, POST /prompt, /history), and HTTP + rendering outside run().
    inside = [x["total_ms"] - x["queued_ms"] - x["execution_ms"] - x["outputs_ms"] - x["inputs_ms"] for x in t]
    print(
        f"    p50 parts: queued {pct([x['queued_ms'] for x in t], 50):.1f}  outputs {pct([x['outputs_ms'] for x in t], 50):.1f}"
        f"  other in run() {pct(inside, 50):.1f}  http+render {pct([x['wall_ms'] - x['total_ms'] for x in t], 50):.1f} ms"
    )


async def direct(session: aiohttp.ClientSession, comfy: str, root: Path, size: int, n: int) -> None:
    """Baseline under the same load: a minimal in-process client of ComfyUI (persistent
    websocket, POST /prompt, `executing: null`, /history, file read, base64 + json.dumps)."""
    ws = await session.ws_connect(comfy.replace("http", "ws", 1) + "/ws?clientId=bench-direct",
                                  max_msg_size=0, compress=0)
    waiters: dict[str, asyncio.Future] = {}
    stamps: dict[str, list[int]] = {}

    async def read() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            d = m.get("data") or {}
            pid = d.get("prompt_id")
            if m["type"] in ("execution_start", "execution_success") and pid:
                stamps.setdefault(pid, []).append(d["timestamp"])
            elif m["type"] == "executing" and d.get("node") is None and pid in waiters:
                waiters[pid].set_result(None)

    reader = asyncio.ensure_future(read())
    over = []
    for i in range(n):
        pid = str(uuid.uuid4())
        graph = workflow(size)
        graph["2"]["inputs"]["filename_prefix"] = f"direct/{pid}/img"
        waiters[pid] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        async with session.post(comfy + "/prompt", json={"prompt": graph, "client_id": "bench-direct", "prompt_id": pid}) as r:
            await r.read()
        await waiters.pop(pid)
        async with session.get(f"{comfy}/history/{pid}") as r:
            hist = await r.json()
        outs = []
        for node in hist[pid]["outputs"].values():
            for img in node.get("images", []):
                raw = (root / "output" / img["subfolder"] / img["filename"]).read_bytes()
                outs.append({"filename": img["filename"], "data": base64.b64encode(raw).decode()})
        body = json.dumps({"output": outs}).encode()
        wall = (time.perf_counter() - t0) * 1000
        start, end = stamps.pop(pid)
        over.append(wall - (end - start))
        assert len(body) > 1000
    reader.cancel()
    await ws.close()
    print(f"direct baseline: n={n}  overhead p50 {pct(over, 50):.1f} ms  p95 {pct(over, 95):.1f} ms  p99 {pct(over, 99):.1f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--exec-ms", type=float, default=0.0, help="the double's fixed execution time per prompt")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--view", action="store_true", help="don't tell the bridge ComfyUI's folder: outputs via /view")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the bridge during the concurrency-1 run (collapsed stacks)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        cport, bport = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        double = subprocess.Popen(
            [sys.executable, "-m", "tests.comfy_double", "--port", str(cport), "--exec-ms", str(args.exec_ms),
             "--root", tmp], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cmd = [str(Path(sys.executable).parent / "comfy-worker"), "bridge", "--comfyui-url",
               f"http://127.0.0.1:{cport}", "--port", str(bport), "--log-level", "WARNING"]
        if not args.view:
            cmd += ["--comfyui-path", tmp]
        bridge = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        try:
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
                base = f"http://127.0.0.1:{bport}"
                await wait_ready(session, base + "/ready", [double, bridge])
                url = base + "/generate/sync"
                for i in range(args.warmup):
                    await one(session, url, {"input": {"workflow_json": workflow(args.size)}})
                print(f"bridge overhead, one {args.size}x{args.size} PNG inline, outputs read "
                      f"{'via /view' if args.view else 'from disk'}, double exec-ms {args.exec_ms:g}")
                for conc in (1, 8):
                    spy = None
                    if args.profile and conc == 1:
                        spy = subprocess.Popen(["py-spy", "record", "--pid", str(bridge.pid), "-o", args.profile,
                                                "--format", "raw", "-r", "1000", "--nonblocking"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        await asyncio.sleep(1)
                    await level(session, url, args.size, args.requests, conc)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                print(f"bridge RSS: {rss_mb(bridge.pid):.1f} MB")
                await direct(session, f"http://127.0.0.1:{cport}", Path(tmp), args.size, args.requests)
        finally:
            for p in (bridge, double):
                p.terminate()
            for p in (bridge, double):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    asyncio.run(main())
