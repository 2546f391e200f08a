"""What the bridge adds on top of ComfyUI's own execution, for one inline 1024x1024 PNG.

Starts the ComfyUI double and the bridge (`comfy-worker bridge`) as subprocesses, so the
RSS and CPU printed are the bridge's own, then sends N requests at concurrency 1 and 8:

    overhead = caller's wall time - timings.execution_ms (ComfyUI's execution_start to
               execution_success, from the response)

At concurrency 1 each bridge request alternates with one from a minimal direct client
(persistent websocket, POST /prompt, `executing: null`, /history, file read, base64 +
json.dumps, in the bench process): both see the same load, so the pair is a fair
comparison on a shared machine. At concurrency 8 the overhead includes waiting in
ComfyUI's queue (it runs one prompt at a time), so `minus queue` is printed too.
`bridge CPU` (user+system seconds of the bridge process per request) moves little with
other load. Target on a 2-core box: p50 <= 10 ms and p99 <= 30 ms at concurrency 1.

    .venv/bin/python bench/bridge_overhead.py [--requests 200] [--exec-ms 0] [--size 1024]
        [--view] [--profile FILE (needs py-spy)]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from comfy_bridge.app import tune_malloc
from common import free_port, pct, rss_mb, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def workflow(size: int) -> dict:
    return {
        "1": {"class_type": "DoubleNoiseImage", "inputs": {"width": size, "height": size, "batch_size": 1, "seed": 7}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(over: list[float]) -> str:
    return f"p50 {pct(over, 50):.1f} ms  p95 {pct(over, 95):.1f} ms  p99 {pct(over, 99):.1f} ms"


class Bridge:
    def __init__(self, session: aiohttp.ClientSession, url: str, size: int) -> None:
        self.session, self.url, self.size = session, url + "/generate/sync", size

    async def one(self, request_id: str | None = None) -> dict:
        body = {"input": {"workflow_json": workflow(self.size)}}
        if request_id:
            body["input"]["request_id"] = request_id
        t0 = time.perf_counter()
        async with self.session.post(self.url, json=body) as r:
            raw = await r.read()
            wall = (time.perf_counter() - t0) * 1000
            if r.status != 200:
                raise SystemExit(f"request failed {r.status}: {raw[:300]!r}")
        data = json.loads(raw)
        out = data["output"]
        assert out and out[0]["data"] and out[0]["mimetype"] == "image/png", out
        return {**data["timings"], "wall_ms": wall}


class Direct:
    """The least any client of ComfyUI pays: one websocket, /prompt, /history, file, base64."""

    def __init__(self, session: aiohttp.ClientSession, comfy: str, root: Path, size: int) -> None:
        self.session, self.comfy, self.root, self.size = session, comfy, root, size
        self.waiters: dict[str, asyncio.Future] = {}
        self.stamps: dict[str, list[int]] = {}

    async def start(self) -> None:
        self.ws = await self.session.ws_connect(
            self.comfy.replace("http", "ws", 1) + "/ws?clientId=bench-direct", max_msg_size=0, compress=0)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            d = m.get("data") or {}
            pid = d.get("prompt_id")
            if m["type"] in ("execution_start", "execution_success") and pid:
                self.stamps.setdefault(pid, []).append(d["timestamp"])
            elif m["type"] == "executing" and d.get("node") is None and pid in self.waiters:
                self.waiters[pid].set_result(None)

    async def one(self) -> float:
        pid = str(uuid.uuid4())
        graph = workflow(self.size)
        graph["2"]["inputs"]["filename_prefix"] = f"direct/{pid}/img"
        self.waiters[pid] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        body = {"prompt": graph, "client_id": "bench-direct", "prompt_id": pid}
        async with self.session.post(self.comfy + "/prompt", json=body) as r:
            await r.read()
        await asyncio.wait_for(self.waiters[pid], 30)
        del self.waiters[pid]
        async with self.session.get(f"{self.comfy}/history/{pid}") as r:
            hist = await r.json()
        outs = []
        for node in hist[pid]["outputs"].values():
            for img in node.get("images", []):
                raw = (self.root / "output" / img["subfolder"] / img["filename"]).read_bytes()
                outs.append({"filename": img["filename"], "data": base64.b64encode(raw).decode()})
        payload = json.dumps({"output": outs}).encode()
        wall = (time.perf_counter() - t0) * 1000
        assert len(payload) > 1000
        start, end = self.stamps.pop(pid)
        return wall - (end - start)

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


def report(conc: int, t: list[dict], elapsed: float, cpu: float) -> None:
    n = len(t)
    over = [x["wall_ms"] - x["execution_ms"] for x in t]
    over_nq = [o - x["queued_ms"] for o, x in zip(over, t)]
    print(f"bridge, concurrency {conc}: n={n}  overhead {summary(over)}  | minus queue p50 "
          f"{pct(over_nq, 50):.1f} p99 {pct(over_nq, 99):.1f} ms  | ComfyUI exec p50 "
          f"{pct([x['execution_ms'] for x in t], 50):.1f} ms  | {n / elapsed:.1f} req/s")
    # Where it goes (p50s): submit -> execution_start, files -> encoded, the rest inside
    # run() (checks, POST /prompt, /history), and HTTP + rendering outside run().
    inside = [x["total_ms"] - x["queued_ms"] - x["execution_ms"] - x["outputs_ms"] - x["inputs_ms"] for x in t]
    print(f"    p50 parts: queued {pct([x['queued_ms'] for x in t], 50):.1f}  outputs "
          f"{pct([x['outputs_ms'] for x in t], 50):.1f}  other in run() {pct(inside, 50):.1f}  http+render "
          f"{pct([x['wall_ms'] - x['total_ms'] for x in t], 50):.1f} ms  | bridge CPU {cpu * 1000 / n:.1f} ms/request")


async def level_1(bridge: Bridge, direct: Direct, n: int, pid: int, profile: str | None) -> None:
    spy = None
    if profile:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "-o", profile, "--format", "raw",
                                "-r", "1000", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    timings, direct_over, elapsed, cpu = [], [], 0.0, 0.0
    for i in range(n):
        t0, cpu0 = time.perf_counter(), cpu_s(pid)
        timings.append(await bridge.one(f"bench-1-{i}"))
        elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + cpu_s(pid) - cpu0
        direct_over.append(await direct.one())
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    report(1, timings, elapsed, cpu)
    print(f"direct client, interleaved: n={n}  overhead {summary(direct_over)}")


async def level(bridge: Bridge, n: int, conc: int, pid: int) -> None:
    timings: list[dict] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            timings.append(await bridge.one(f"bench-{conc}-{i}"))

    t0, cpu0 = time.perf_counter(), cpu_s(pid)
    await asyncio.gather(*(worker() for _ in range(conc)))
    report(conc, timings, time.perf_counter() - t0, cpu_s(pid) - cpu0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--exec-ms", type=float, default=0.0, help="the double's fixed execution time per prompt")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--view", action="store_true", help="don't tell the bridge ComfyUI's folder: outputs via /view")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the bridge during the concurrency-1 run (collapsed stacks)")
    args = ap.parse_args()
    # The caller in production is the worker process, which runs build_app and so this
    # tuning too; without it the bench's own 2.4 MB reads would dominate its timings.
    tune_malloc()

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
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        try:
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
                base = f"http://127.0.0.1:{bport}"
                await wait_ready(session, base + "/ready", [double, proc])
                bridge = Bridge(session, base, args.size)
                direct = Direct(session, f"http://127.0.0.1:{cport}", Path(tmp), args.size)
                await direct.start()
                for _ in range(args.warmup):
                    await bridge.one()
                    await direct.one()
                print(f"one {args.size}x{args.size} PNG inline, outputs read "
                      f"{'via /view' if args.view else 'from disk'}, double exec-ms {args.exec_ms:g}")
                await level_1(bridge, direct, args.requests, proc.pid, args.profile)
                await level(bridge, args.requests, 8, proc.pid)
                print(f"bridge RSS: {rss_mb(proc.pid):.1f} MB")
                await direct.close()
        finally:
            for p in (proc, double):
                p.terminate()
            for p in (proc, double):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    asyncio.run(main())
