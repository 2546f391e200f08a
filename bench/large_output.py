"""Peak memory of the worker while it returns one big output (1 GiB), inline and to S3.

    .venv/bin/python bench/large_output.py [--mib 1024]

The stack is `comfy-worker serve --local` (router emulator, the real PyWorker framework,
the bridge inside it) in front of the ComfyUI double, which runs here in the bench
process with one extra node, BenchBlob, that writes a file of --mib MiB into ComfyUI's
output folder (like a long video). Two requests go through the router:

- inline: `return_outputs_as_base64: true`; the caller reads the 1.33 GiB body in chunks
  and checks that it decodes to the file;
- s3: the worker's S3_* settings point at a SeaweedFS on loopback; the object's size is
  checked.

Printed per request: the worker process's peak RSS during it (VmHWM, reset before each
request through /proc/PID/clear_refs; sampled RSS every 20 ms where that is refused),
its RSS before, and the wall time. The output is held whole nowhere: the figure to look
at is peak minus before, against the output's size.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import free_port, rss_mb, stop, wait_line

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.comfy_double import ComfyDouble  # noqa: E402
from tests.comfy_double.node_library import NodeDef, NodeResult, _save_path  # noqa: E402
from tests.io.seaweed import start_seaweed  # noqa: E402

_BLOCK = os.urandom(1 << 20)


def _blob_node(mib: int) -> NodeDef:
    def write(rt: Any, a: dict) -> dict:
        full, filename, counter, subfolder = _save_path(rt.output_dir, a["filename_prefix"])
        name = f"{filename}_{counter:05}_.mp4"
        with open(full / name, "wb") as f:
            for _ in range(mib):
                f.write(_BLOCK)
        return {"filename": name, "subfolder": subfolder, "type": "output"}

    async def run(rt: Any, a: dict) -> NodeResult:
        return NodeResult((), {"gifs": [await asyncio.to_thread(write, rt, a)]})

    return NodeDef("BenchBlob", lambda f: {"required": {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
        "filename_prefix": ("STRING", {"default": "blob"}),
    }}, (), run, "bench", output_node=True)


def _graph(seed: int) -> dict[str, Any]:
    return {"1": {"class_type": "BenchBlob", "inputs": {"seed": seed, "filename_prefix": "big"}}}


def _expected_sha(mib: int) -> str:
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(_BLOCK)
    return h.hexdigest()


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def _sampled_peak(pid: int, done: asyncio.Event) -> float:
    peak = 0.0
    while not done.is_set():
        peak = max(peak, rss_mb(pid))
        try:
            await asyncio.wait_for(done.wait(), 0.02)
        except asyncio.TimeoutError:
            pass
    return peak


async def _route(s: aiohttp.ClientSession, router: str) -> dict[str, Any]:
    async with s.post(f"{router}/route/", json={"endpoint": "local", "api_key": "local", "cost": 1}) as r:
        return await r.json()


async def _inline(s: aiohttp.ClientSession, router: str, seed: int) -> str:
    """Send, read the body in chunks, return the sha256 of the decoded output."""
    auth = await _route(s, router)
    job = {"workflow_json": _graph(seed), "return_outputs_as_base64": True, "request_id": f"big-inline-{seed}"}
    async with s.post(f"{auth['url']}/generate/sync", json={"auth_data": auth, "payload": {"input": job}}) as r:
        assert r.status == 200, (await r.read())[:500]
        h, carry, in_data = hashlib.sha256(), b"", False
        async for chunk in r.content.iter_chunked(4 << 20):
            if not in_data:  # the body's head, up to the opening quote of "data"
                head = carry + chunk
                at = head.find(b'"data":"')
                if at < 0:
                    carry = head
                    continue
                chunk, in_data, carry = head[at + 8:], True, b""
            end = chunk.find(b'"')
            piece = carry + (chunk if end < 0 else chunk[:end])
            usable = len(piece) - len(piece) % 4
            h.update(base64.b64decode(piece[:usable]))
            carry = piece[usable:]
            if end >= 0:
                h.update(base64.b64decode(carry))
                carry = b""
                in_data = False
                break
        async for _ in r.content.iter_chunked(1 << 16):
            pass
        return h.hexdigest()


async def _s3(s: aiohttp.ClientSession, router: str, seed: int) -> int:
    auth = await _route(s, router)
    job = {"workflow_json": _graph(seed), "request_id": f"big-s3-{seed}"}
    async with s.post(f"{auth['url']}/generate/sync", json={"auth_data": auth, "payload": {"input": job}}) as r:
        body = await r.json()
        assert r.status == 200, body
        return int(body["output"][0]["bytes"])


async def _measure(pid: int, what: str, run: Any) -> tuple[str, Any]:
    before = rss_mb(pid)
    exact = _reset_hwm(pid)
    done = asyncio.Event()
    sampler = asyncio.ensure_future(_sampled_peak(pid, done))
    t0 = time.perf_counter()
    result = await run
    wall = time.perf_counter() - t0
    done.set()
    sampled = await sampler
    peak = _hwm_mb(pid) if exact else sampled
    how = "VmHWM" if exact else "sampled every 20 ms"
    return (f"{what:7s} worker RSS before {before:7.1f} MiB, peak {peak:7.1f} MiB ({how}; sampled {sampled:.1f}), "
            f"peak - before {peak - before:7.1f} MiB, {wall:6.1f} s"), result


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-large-") as td:
        tmp = Path(td)
        double = ComfyDouble(root=tmp / "comfy", previews=False)
        double.library["BenchBlob"] = _blob_node(args.mib)
        await double.start("127.0.0.1", 0)
        weed = await asyncio.to_thread(start_seaweed, tmp / "seaweed")
        weed.bucket("bench")
        port, router_port = free_port(), free_port()
        bench_wf = tmp / "benchmark.json"
        bench_wf.write_text(json.dumps({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "warm"}}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "S3_"))}
        env.update({
            "COMFY_WORKER_BENCHMARK_RUNS": "1", "COMFY_WORKER_BENCHMARK_CONCURRENCY": "1",
            "COMFY_BRIDGE_COMFYUI_PATH": str(tmp / "comfy"), "COMFY_BRIDGE_SPOOL_DIR": str(tmp / "spool"),
            "COMFY_BRIDGE_MAX_INLINE_BYTES": str(4 << 30), "COMFY_BRIDGE_DEFAULT_TIMEOUT_S": "1200",
            "S3_ENDPOINT_URL": weed.endpoint, "S3_BUCKET_NAME": "bench", "S3_REGION": "us-east-1",
            "S3_ACCESS_KEY_ID": weed.access_key, "S3_SECRET_ACCESS_KEY": weed.secret_key,
            "PYTHONUNBUFFERED": "1",
        })
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "serve", "--local", "--comfyui-url", double.url,
            "--port", str(port), "--router-port", str(router_port), "--benchmark-workflow", str(bench_wf),
            "--state-dir", str(tmp / "state"), "--log-level", "WARNING", cwd=str(REPO), env=env,
            start_new_session=True, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_line(worker.stdout, "comfy-worker call", 180)  # type: ignore[arg-type]
            router = f"http://127.0.0.1:{router_port}"
            expected = _expected_sha(args.mib)
            print(f"one {args.mib} MiB output ({args.mib * 4 / 3:.0f} MiB as base64), "
                  f"worker = PyWorker framework + bridge in one process")
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as s:
                line, sha = await _measure(worker.pid, "inline", _inline(s, router, 1))
                print(line + ("" if sha == expected else "  DECODED OUTPUT DIFFERS"))
                line, size = await _measure(worker.pid, "s3", _s3(s, router, 2))
                print(line + ("" if size == args.mib << 20 else f"  SIZE {size}"))
        finally:
            await stop(worker)
            await double.close()
            weed.stop()
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=1024)
    sys.exit(asyncio.run(main(p.parse_args())))
