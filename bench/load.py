"""Load: 500 requests in bursts against the local stack; latency, 429s, errors, RSS.

    .venv/bin/python bench/load.py [--requests 500] [--burst 50] [--gap-s 2.0]
                                   [--exec-ms 50] [--size 256] [--max-queue-time-s 30]

The stack is what `comfy-worker serve --local` runs: the router emulator, the real
PyWorker framework (signatures checked) with the bridge inside, in front of the ComfyUI
double executing each prompt in a fixed T ms. Requests come in open-loop bursts: every
`gap` seconds `burst` requests are routed (POST /route/) and sent at once, whether or not
the previous burst has finished, so the queue grows when bursts outrun the GPU and the
framework's admission control (429 once queued work / max_perf > max_queue_time) shows.
Nothing is retried: each request's status is counted as it comes.

Printed: latency p50/p95/p99/max of the 200s (route + generate, as a backend sees it),
the 429 count, every other non-200 (must be 0), throughput, and the worker process's
RSS before the first burst and after the last (the bridge runs inside it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import free_port, pct, rss_mb, stop, wait_line

REPO = Path(__file__).resolve().parents[1]


def graph(size: int, seed: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": size, "height": size, "batch_size": 1, "color": seed % 0xFFFFFF}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "load"}},
    }


async def one(session: aiohttp.ClientSession, router: str, job: dict[str, Any]) -> tuple[int, float, str]:
    """(status, latency s, error text) of one routed call; status 0: no worker to route to."""
    t0 = time.perf_counter()
    try:
        async with session.post(f"{router}/route/", json={"endpoint": "local", "api_key": "local", "cost": 1}) as r:
            auth = await r.json()
        if "url" not in auth:
            return 0, time.perf_counter() - t0, f"router: {auth}"
        payload = {"auth_data": auth, "payload": {"input": job}}
        async with session.post(f"{auth['url']}/generate/sync", json=payload) as r:
            body = await r.read()
            text = "" if r.status == 200 else body[:300].decode(errors="replace")
            return r.status, time.perf_counter() - t0, text
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return -1, time.perf_counter() - t0, repr(exc)


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as td:
        tmp = Path(td)
        comfy_port, port, router_port = free_port(), free_port(), free_port()
        double = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.comfy_double", "--port", str(comfy_port), "--exec-ms", str(args.exec_ms),
            "--root", str(tmp / "comfy"), "--no-previews", cwd=str(REPO), start_new_session=True,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        worker = None
        try:
            await wait_line(double.stdout, "To see the GUI", 60)  # type: ignore[arg-type]
            wf = tmp / "bench.json"
            wf.write_text(json.dumps(graph(args.size, 1)))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "S3_"))}
            env.update({
                "COMFY_WORKER_MAX_QUEUE_TIME_S": str(args.max_queue_time_s),
                "COMFY_WORKER_BENCHMARK_RUNS": "2",
                "COMFY_BRIDGE_COMFYUI_PATH": str(tmp / "comfy"),  # outputs read from disk, as in production
                "COMFY_BRIDGE_SPOOL_DIR": str(tmp / "spool"),
                "PYTHONUNBUFFERED": "1",
            })
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "serve", "--local", "--comfyui-url", f"http://127.0.0.1:{comfy_port}",
                "--port", str(port), "--router-port", str(router_port), "--benchmark-workflow", str(wf),
                "--state-dir", str(tmp / "state"), "--log-level", "WARNING", cwd=str(REPO), env=env,
                start_new_session=True, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            await wait_line(worker.stdout, "comfy-worker call", 120)  # type: ignore[arg-type]
            router = f"http://127.0.0.1:{router_port}"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as s:
                await one(s, router, {"workflow_json": graph(args.size, 2)})  # warm connections
                rss_before = rss_mb(worker.pid)
                tasks: list[asyncio.Task[tuple[int, float, str]]] = []
                t0 = time.perf_counter()
                n = 0
                while n < args.requests:
                    k = min(args.burst, args.requests - n)
                    tasks += [asyncio.ensure_future(one(s, router, {"workflow_json": graph(args.size, 100 + n + i)}))
                              for i in range(k)]
                    n += k
                    if n < args.requests:
                        await asyncio.sleep(args.gap_s)
                results = await asyncio.gather(*tasks)
                wall = time.perf_counter() - t0
                await asyncio.sleep(0.5)  # let background cleanups finish
                rss_after = rss_mb(worker.pid)
        finally:
            if worker is not None:
                await stop(worker)
            await stop(double)

    counts = collections.Counter(status for status, _, _ in results)
    ok = [lat for status, lat, _ in results if status == 200]
    others = [(status, err) for status, _, err in results if status not in (200, 429)]
    summary = {
        "requests": len(results), "burst": args.burst, "gap_s": args.gap_s, "exec_ms": args.exec_ms,
        "size": args.size, "max_queue_time_s": args.max_queue_time_s,
        "ok": counts[200], "rejected_429": counts[429], "other_errors": len(others),
        "p50_ms": pct(ok, 50) * 1000, "p95_ms": pct(ok, 95) * 1000, "p99_ms": pct(ok, 99) * 1000,
        "max_ms": max(ok) * 1000 if ok else float("nan"), "mean_ms": statistics.fmean(ok) * 1000 if ok else float("nan"),
        "wall_s": wall, "throughput_rps": counts[200] / wall,
        "worker_rss_mb_before": rss_before, "worker_rss_mb_after": rss_after,
    }
    print(f"{summary['requests']} requests in bursts of {args.burst} every {args.gap_s:g} s; "
          f"ComfyUI double {args.exec_ms:g} ms/prompt, {args.size}x{args.size} PNG inline; "
          f"max_queue_time {args.max_queue_time_s:g} s")
    print(f"  200: {summary['ok']}   429: {summary['rejected_429']}   other errors: {summary['other_errors']}")
    print(f"  latency of the 200s (route + generate): p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
          f"p99 {summary['p99_ms']:.0f} ms, max {summary['max_ms']:.0f} ms")
    print(f"  wall {wall:.1f} s, {summary['throughput_rps']:.1f} successful requests/s")
    print(f"  worker RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after")
    for status, err in others[:5]:
        print(f"  error: {status}: {err}")
    print(json.dumps(summary))
    return 1 if others else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--gap-s", type=float, default=2.0)
    p.add_argument("--exec-ms", type=float, default=50.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-queue-time-s", type=float, default=30.0)
    sys.exit(asyncio.run(main(p.parse_args())))
