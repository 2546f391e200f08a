"""What S3 delivery costs: upload throughput, and ComfyUI's idle time between prompts.

1. Throughput: N outputs of 2 MB (incompressible, like PNGs) delivered by S3Destination
   to a local SeaweedFS, N = 1, 8, 32; median of --repeats runs. For reference, the same
   files uploaded one after another with boto3's `upload_file` (what a simple handler does).
2. ComfyUI-idle gap: the ComfyUI double (subprocess, fixed --exec-ms per prompt, a
   1024x1024 noise PNG of about 3 MB per prompt) behind the bridge (`comfy-worker bridge`
   subprocess, S3_* pointing at SeaweedFS); --prompts requests at concurrency 1 and 2,
   outputs to S3 versus inline base64. The gap is ComfyUI's own clock, from
   /history: execution_start of prompt k+1 minus execution_success of prompt k. Every
   millisecond of it is GPU time paid for and unused.

    .venv/bin/python bench/delivery.py [--repeats 5] [--prompts 20] [--exec-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfy_bridge.delivery.base import Artifact  # noqa: E402
from comfy_bridge.delivery.s3 import S3Destination  # noqa: E402
from comfy_bridge.schemas.job import JobInput  # noqa: E402
from comfy_bridge.settings import BridgeSettings, S3Settings  # noqa: E402
from tests.io.seaweed import REGION, Seaweed, free_port, start_seaweed  # noqa: E402
from common import wait_ready

MB = 1024 * 1024
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def make_files(folder: Path, n: int, size: int) -> list[Artifact]:
    folder.mkdir(parents=True, exist_ok=True)
    arts = []
    for i in range(n):
        path = folder / f"out_{i:05d}_.png"
        path.write_bytes(os.urandom(size))
        arts.append(Artifact(filename=path.name, node_id="9", output_type="images", mimetype="image/png", path=path))
    return arts


async def throughput(weed: Seaweed, tmp: Path, repeats: int, size: int) -> None:
    bucket = weed.bucket("bench-out")
    settings = BridgeSettings(
        spool_dir=tmp / "spool",
        s3=S3Settings(endpoint_url=weed.endpoint, bucket_name=bucket, region=REGION,
                      access_key_id=weed.access_key, secret_access_key=weed.secret_key),
    )
    dest = S3Destination(settings)
    plain = weed.client()
    # Warm up: client creation and the bucket's first volumes are not what we measure.
    await dest.deliver(JobInput(workflow_json=GRAPH, request_id="warm"), make_files(tmp / "warm", 4, size))
    print(f"upload throughput to local SeaweedFS, {size / MB:g} MB outputs, median of {repeats} runs "
          f"(max_concurrency {settings.s3.max_concurrency}):")
    for n in (1, 8, 32):
        ours, seq = [], []
        for r in range(repeats):
            arts = make_files(tmp / f"n{n}r{r}", n, size)
            t0 = time.perf_counter()
            outs = await dest.deliver(JobInput(workflow_json=GRAPH, request_id=f"b{n}-{r}"), arts)
            ours.append(time.perf_counter() - t0)
            assert len(outs) == n and all(o.url for o in outs)
            arts = make_files(tmp / f"s{n}r{r}", n, size)
            t0 = time.perf_counter()
            for a in arts:
                await asyncio.to_thread(plain.upload_file, str(a.path), bucket, f"seq/{n}/{r}/{a.filename}",
                                        ExtraArgs={"ContentType": "image/png"})
            seq.append(time.perf_counter() - t0)
        t, s = statistics.median(ours), statistics.median(seq)
        print(f"  {n:2d} x {size / MB:g} MB: S3Destination {t * 1000:7.1f} ms  {n * size / MB / t:6.1f} MB/s"
              f"  | one-by-one upload_file {s * 1000:7.1f} ms  {n * size / MB / s:6.1f} MB/s")
    await dest.aclose()


def workflow(seed: int) -> dict:
    return {
        "1": {"class_type": "DoubleNoiseImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "seed": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


async def gaps(session: aiohttp.ClientSession, bridge: str, comfy: str, mode: str, conc: int, n: int,
               quiet: bool = False) -> None:
    prompt_ids: list[str] = []
    sizes: list[int] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            body = {"input": {"request_id": f"{mode}-{conc}-{i}", "workflow_json": workflow(i),
                              "return_outputs_as_base64": mode == "inline"}}
            async with session.post(bridge + "/generate/sync", json=body) as r:
                data = await r.json()
                if r.status != 200:
                    raise SystemExit(f"{mode}: HTTP {r.status}: {str(data)[:300]}")
            out = data["output"][0]
            assert (out.get("url") if mode == "s3" else out.get("data")), out
            prompt_ids.append(data["prompt_id"])
            sizes.append(out["bytes"])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t0
    spans = []
    for pid in prompt_ids:
        async with session.get(f"{comfy}/history/{pid}") as r:
            entry = (await r.json())[pid]
        stamps = {m[0]: m[1]["timestamp"] for m in entry["status"]["messages"]}
        spans.append((stamps["execution_start"], stamps["execution_success"]))
    spans.sort()
    if quiet:
        return
    g = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    busy = sum(e - s for s, e in spans)
    print(f"  {mode:6s} concurrency {conc}: idle gap p50 {statistics.median(g):6.1f} ms  mean {statistics.fmean(g):6.1f}"
          f"  max {max(g):5d} ms | ComfyUI busy {100 * busy / (spans[-1][1] - spans[0][0]):5.1f}%"
          f" | {n / wall:5.2f} img/s | output {statistics.median(sizes) / MB:.2f} MB")


async def idle_gap(weed: Seaweed, tmp: Path, prompts: int, exec_ms: float) -> None:
    bucket = weed.bucket("bench-gap")
    cport, bport = free_port(), free_port()
    root = tmp / "comfy"
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.comfy_double", "--port", str(cport), "--exec-ms", str(exec_ms), "--root", str(root)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    bridge_env = {**env, "S3_ENDPOINT_URL": weed.endpoint, "S3_BUCKET_NAME": bucket, "S3_REGION": REGION,
                  "S3_ACCESS_KEY_ID": weed.access_key, "S3_SECRET_ACCESS_KEY": weed.secret_key,
                  "COMFY_BRIDGE_SPOOL_DIR": str(tmp / "bridge-spool")}
    procs = [double]
    try:
        bridge = subprocess.Popen(
            [str(Path(sys.executable).parent / "comfy-worker"), "bridge", "--comfyui-url", f"http://127.0.0.1:{cport}",
             "--comfyui-path", str(root), "--port", str(bport), "--log-level", "WARNING"],
            cwd=tmp, env=bridge_env, stdout=subprocess.DEVNULL,
        )
        procs.insert(0, bridge)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            base = f"http://127.0.0.1:{bport}"
            await wait_ready(session, base + "/ready", [double, bridge])
            comfy = f"http://127.0.0.1:{cport}"
            for mode in ("s3", "inline"):  # warm both paths
                await gaps(session, base, comfy, mode, 1, 3, quiet=True)
            print(f"ComfyUI-idle gap between consecutive prompts (double, exec {exec_ms:g} ms + PNG encode, "
                  f"{prompts} prompts each):")
            for conc in (1, 2):
                for mode in ("s3", "inline"):
                    await gaps(session, base, comfy, mode, conc, prompts)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size-mb", type=float, default=2.0)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--exec-ms", type=float, default=300.0, help="the double's fixed execution time per prompt")
    ap.add_argument("--skip", choices=("throughput", "gap"), help="skip one part")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as name:
        tmp = Path(name)
        weed = start_seaweed(tmp / "seaweed")
        try:
            if args.skip != "throughput":
                await throughput(weed, tmp / "tp", args.repeats, int(args.size_mb * MB))
            if args.skip != "gap":
                await idle_gap(weed, tmp / "gap", args.prompts, args.exec_ms)
        finally:
            weed.stop()


if __name__ == "__main__":
    asyncio.run(main())
