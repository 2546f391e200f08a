"""The measured cold start of `comfy-worker serve`, and how accurate its one-generation benchmark is.

    .venv/bin/python bench/cold_start.py --comfyui-path /work/rt/ComfyUI --comfyui-python /work/rt/cvenv/bin/python \
        [--checkpoint /work/rt/cache/models/checkpoints/sd15_random.safetensors] [--samples 6]

Starts `comfy-worker serve --local --comfyui-path` with a fresh state folder and an SD1.5
benchmark graph (64x64, 2 steps: what a CPU allows), COMFY_WORKER_T0 set at launch, and
prints the `ready` line's timeline (worker/cold_start.py). Then, through the router
emulator, `--samples` single generations and three rounds of two at once: max_perf as
the worker now measures it (units / ComfyUI's execution seconds of one generation) against
the framework's old way (units / wall seconds of a round of two, best of three), each as
the spread a single measurement has (coefficient of variation across samples). Without
`--comfyui-path` it uses the ComfyUI double (exec-ms per prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import free_port, stop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.real import graphs  # noqa: E402
from tests.real.launcher import Layout  # noqa: E402
from worker.workload import WorkloadModel  # noqa: E402


async def call(s: aiohttp.ClientSession, router: str, graph: dict) -> tuple[float, float]:
    """(wall s, ComfyUI execution s) of one request through the router."""
    t0 = time.perf_counter()
    while True:
        async with s.post(f"{router}/route/", json={"endpoint": "local", "api_key": "local", "cost": 1}) as r:
            auth = await r.json()
        if "url" in auth:
            break
        await asyncio.sleep(0.1)
    async with s.post(f"{auth['url']}/generate/sync", json={"auth_data": auth, "payload": {"input": {"workflow_json": graph}}}) as r:
        body = await r.json()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {json.dumps(body)[:300]}")
    return time.perf_counter() - t0, body["timings"]["execution_ms"] / 1000


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else float("nan")


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui-path", type=Path, required=True)
    p.add_argument("--comfyui-python")
    p.add_argument("--checkpoint", type=Path, default=Path("/work/rt/cache/models/checkpoints/sd15_random.safetensors"))
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    seeds = iter(range(100, 10_000))
    make = lambda: graphs.sd15_t2i(steps=a.steps, seed=next(seeds))  # noqa: E731
    units = WorkloadModel().graph_units(make())
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as td:
        tmp = Path(td)
        layout = Layout(tmp / "base").create({"sd15": a.checkpoint})
        (tmp / "bench.json").write_text(json.dumps(make()))
        router_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_"))}
        env.update({"COMFY_BRIDGE_COMFYUI_EXTRA_ARGS": shlex.join(layout.flags()),
                    "COMFY_BRIDGE_COMFYUI_PATH": str(layout.base), "COMFY_BRIDGE_SPOOL_DIR": str(tmp / "spool"),
                    "COMFY_WORKER_T0": f"{time.time():.3f}", "PYTHONUNBUFFERED": "1"})
        log = tmp / "serve.log"
        with open(log, "wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "serve", "--local", "--comfyui-path", str(a.comfyui_path),
                *(["--comfyui-python", a.comfyui_python] if a.comfyui_python else []), "--comfyui-port", "0",
                "--port", "0", "--router-port", str(router_port), "--benchmark-workflow", str(tmp / "bench.json"),
                "--state-dir", str(tmp / "state"), cwd=str(REPO), env=env, stdout=fh, stderr=fh,
                start_new_session=True)
        try:
            ready = None
            deadline = time.monotonic() + 900
            while ready is None and time.monotonic() < deadline and proc.returncode is None:
                for line in log.read_text(errors="replace").splitlines():
                    if '"msg": "ready"' in line:
                        ready = json.loads(line)
                await asyncio.sleep(0.5)
            if ready is None:
                print(log.read_text(errors="replace")[-3000:])
                return 1
            print("cold start, seconds from launch to the end of each phase:")
            for phase, t in ready["startup_s"].items():
                print(f"  {phase:<18} {t:7.2f}")
            b = ready["benchmark"]
            print(f"benchmark: {b['generations']} measured after a warm-up of {b['warmup_s']:.2f} s (with the model load): "
                  f"{b['units_per_s']:.3f} units/s")
            router = f"http://127.0.0.1:{router_port}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                single = [await call(s, router, make()) for _ in range(a.samples)]
                rounds = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    await asyncio.gather(call(s, router, make()), call(s, router, make()))
                    rounds.append(2 * units / (time.perf_counter() - t0))
        finally:
            await stop(proc)
    by_exec = [units / e for _, e in single]
    by_wall = [units / w for w, _ in single]
    print(f"\nmax_perf of one generation, {a.samples} samples (units {units}):")
    print(f"  by ComfyUI's execution time (now):  mean {statistics.mean(by_exec):.3f} units/s, CV {cv(by_exec):.1%}")
    print(f"  by wall time of one request:        mean {statistics.mean(by_wall):.3f} units/s, CV {cv(by_wall):.1%}")
    print(f"  framework's way, rounds of 2 (wall): {', '.join(f'{x:.3f}' for x in rounds)}; reported = best "
          f"{max(rounds):.3f} ({max(rounds) / statistics.mean(by_exec) - 1:+.1%} against the execution-time mean), "
          f"CV {cv(rounds):.1%}")
    print(f"  generations before ready: now 1 warm-up + 1; before 1 warm-up + 3 x 2 = 7")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
