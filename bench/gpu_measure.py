"""What the product claims, measured against a real ComfyUI behind the bridge (GPU or CPU).

Sends real checkpoint workflows (CheckpointLoaderSimple -> KSampler -> VAEDecode ->
SaveImage, one image, inline base64 output) through a running bridge and prints:

  (a) bridge overhead = caller's wall time - timings.execution_ms (ComfyUI's own
      execution_start to execution_success), p50/p95 over sequential euler requests,
      and the per-image execution time;
  (b) the workload model: measured execution-time ratio of res_2s/beta57 to euler
      against the ratio of the units worker/workload.py gives their graphs;
  (c) N prompts sent at once vs the same N sent one after another (each waiting for
      the previous answer): wall time of each batch.

Every prompt gets its own seed: a repeated graph would hit ComfyUI's cache and execute
nothing. The first request (which loads the model) is reported apart.

    python bench/gpu_measure.py --bridge-url http://127.0.0.1:18288 \
        [--comfyui-url http://127.0.0.1:8188] [--ckpt sdxl_random.safetensors] \
        [--size 1024] [--steps 20] [--euler 12] [--res 5] [--batch 5] [--rounds 2] \
        [--json-out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
_seeds = itertools.count(1000)


def graph(ckpt: str, size: int, steps: int, sampler: str, scheduler: str, cfg: float) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 0, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "gpu_measure", "images": ["8", 0]}},
    }


def units_of(g: dict[str, Any]) -> float | None:
    try:
        sys.path.insert(0, str(ROOT))
        from worker.workload import WorkloadModel
    except ImportError:
        return None
    return WorkloadModel().graph_units(g)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: small samples stay honest)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))] if s else float("nan")


class Bench:
    def __init__(self, a: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.a = a
        self.s = session
        self.url = a.bridge_url.rstrip("/") + "/generate/sync"

    def job(self, sampler: str, scheduler: str) -> dict[str, Any]:
        g = graph(self.a.ckpt, self.a.size, self.a.steps, sampler, scheduler, self.a.cfg)
        g["3"]["inputs"]["seed"] = next(_seeds)
        return g

    async def one(self, g: dict[str, Any]) -> dict[str, Any]:
        body = {"input": {"workflow_json": g, "return_outputs_as_base64": True}}
        t0 = time.perf_counter()
        async with self.s.post(self.url, json=body) as r:
            raw = await r.read()
            wall = (time.perf_counter() - t0) * 1000
            status = r.status
        data = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {json.dumps(data)[:600]}")
        t = data["timings"]
        out = data.get("output") or []
        return {
            "wall_ms": wall,
            "exec_ms": t["execution_ms"],
            "queued_ms": t["queued_ms"],
            "outputs_ms": t["outputs_ms"],
            "bridge_total_ms": t["total_ms"],
            "overhead_ms": wall - t["execution_ms"],
            "workload": data.get("workload"),
            "out_bytes": sum(o.get("bytes", 0) for o in out),
            "n_out": len(out),
            "inline": all(o.get("data") for o in out) and bool(out),
        }

    async def sequential(self, sampler: str, scheduler: str, n: int) -> list[dict[str, Any]]:
        return [await self.one(self.job(sampler, scheduler)) for _ in range(n)]

    async def batch_wall(self, n: int, concurrent: bool) -> tuple[float, list[dict[str, Any]]]:
        jobs = [self.job("euler", "normal") for _ in range(n)]
        t0 = time.perf_counter()
        if concurrent:
            res = list(await asyncio.gather(*(self.one(g) for g in jobs)))
        else:
            res = [await self.one(g) for g in jobs]
        return (time.perf_counter() - t0) * 1000, res


async def check_comfy(a: argparse.Namespace, s: aiohttp.ClientSession) -> dict[str, Any]:
    """Device, versions and whether RES4LYF's sampler and scheduler are in KSampler's lists."""
    info: dict[str, Any] = {}
    if not a.comfyui_url:
        return info
    base = a.comfyui_url.rstrip("/")
    async with s.get(base + "/system_stats") as r:
        st = await r.json()
    info["comfyui_version"] = st.get("system", {}).get("comfyui_version")
    info["pytorch_version"] = st.get("system", {}).get("pytorch_version")
    info["devices"] = [d.get("name") for d in st.get("devices", [])]
    async with s.get(base + "/object_info/KSampler") as r:
        ks = (await r.json())["KSampler"]["input"]["required"]
    samplers, schedulers = ks["sampler_name"][0], ks["scheduler"][0]
    info["res_2s_in_ksampler"] = a.res_sampler in samplers
    info["beta57_in_ksampler"] = a.res_scheduler in schedulers
    return info


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    def col(k: str) -> list[float]:
        return [r[k] for r in rows]

    return {
        "n": len(rows),
        "wall_p50_ms": statistics.median(col("wall_ms")),
        "exec_p50_ms": statistics.median(col("exec_ms")),
        "exec_mean_ms": statistics.fmean(col("exec_ms")),
        "exec_min_ms": min(col("exec_ms")),
        "exec_max_ms": max(col("exec_ms")),
        "overhead_p50_ms": statistics.median(col("overhead_ms")),
        "overhead_p95_ms": pct(col("overhead_ms"), 95),
        "overhead_max_ms": max(col("overhead_ms")),
        "queued_p50_ms": statistics.median(col("queued_ms")),
        "outputs_p50_ms": statistics.median(col("outputs_ms")),
        "out_bytes_p50": statistics.median(col("out_bytes")),
    }


async def run(a: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        res: dict[str, Any] = {"params": vars(a).copy(), "comfy": await check_comfy(a, s)}
        b = Bench(a, s)
        print(f"comfy: {json.dumps(res['comfy'])}", flush=True)

        first = await b.one(b.job("euler", "normal"))
        res["first"] = first
        print(f"first request (loads the model): wall {first['wall_ms']:.0f} ms, exec {first['exec_ms']:.0f} ms, "
              f"output {first['out_bytes']} B inline={first['inline']}", flush=True)
        for _ in range(a.warmup):
            await b.one(b.job("euler", "normal"))

        euler = await b.sequential("euler", "normal", a.euler)
        res["euler_rows"] = euler
        res["euler"] = summary(euler)

        if a.res > 0:
            await b.one(b.job(a.res_sampler, a.res_scheduler))  # first res_2s: RES4LYF's own warm-up
            resr = await b.sequential(a.res_sampler, a.res_scheduler, a.res)
            res["res_rows"] = resr
            res["res"] = summary(resr)
            ue = units_of(graph(a.ckpt, a.size, a.steps, "euler", "normal", a.cfg))
            ur = units_of(graph(a.ckpt, a.size, a.steps, a.res_sampler, a.res_scheduler, a.cfg))
            measured = res["res"]["exec_mean_ms"] / res["euler"]["exec_mean_ms"]
            res["workload"] = {
                "units_euler": ue,
                "units_res": ur,
                "units_ratio": (ur / ue) if ue and ur else None,
                "units_ratio_sampler_only": ((ur - 1) / (ue - 1)) if ue and ur and ue > 1 else None,
                "measured_exec_ratio": measured,
                "measured_wall_ratio": res["res"]["wall_p50_ms"] / res["euler"]["wall_p50_ms"],
                "response_workload_euler": euler[0]["workload"],
                "response_workload_res": resr[0]["workload"],
            }

        if a.batch > 1 and a.rounds > 0:
            rounds = []
            for i in range(a.rounds):
                order = (False, True) if i % 2 == 0 else (True, False)
                walls = {}
                for conc in order:
                    w, rows = await b.batch_wall(a.batch, conc)
                    walls["concurrent" if conc else "sequential"] = {
                        "wall_ms": w, "exec_sum_ms": sum(r["exec_ms"] for r in rows),
                    }
                rounds.append(walls)
            res["batch"] = rounds
        return res


def report(res: dict[str, Any]) -> None:
    p = res["params"]
    dev = ", ".join(res["comfy"].get("devices") or []) or "?"
    print(f"\n== {p['ckpt']} {p['size']}x{p['size']} {p['steps']} steps cfg {p['cfg']}, one image, inline; device: {dev}")
    print(f"{'workflow':<22}{'n':>3}{'exec p50':>10}{'exec min-max':>16}{'wall p50':>10}"
          f"{'ovh p50':>9}{'ovh p95':>9}{'ovh max':>9}{'queued':>8}{'outputs':>9}")
    for key, name in (("euler", "euler/normal"), ("res", f"{p['res_sampler']}/{p['res_scheduler']}")):
        if key not in res:
            continue
        s = res[key]
        print(f"{name:<22}{s['n']:>3}{s['exec_p50_ms']:>10.1f}"
              f"{s['exec_min_ms']:>8.0f}-{s['exec_max_ms']:<7.0f}{s['wall_p50_ms']:>10.1f}"
              f"{s['overhead_p50_ms']:>9.1f}{s['overhead_p95_ms']:>9.1f}{s['overhead_max_ms']:>9.1f}"
              f"{s['queued_p50_ms']:>8.1f}{s['outputs_p50_ms']:>9.1f}")
    print(f"(ms; ovh = caller wall - timings.execution_ms; output {res['euler']['out_bytes_p50']:.0f} B PNG as base64)")
    w = res.get("workload")
    if w:
        print(f"workload: units euler {w['units_euler']}, {p['res_sampler']} {w['units_res']}: ratio "
              f"{w['units_ratio']:.2f} (sampler part {w['units_ratio_sampler_only']:.2f}); "
              f"measured exec ratio {w['measured_exec_ratio']:.2f}, wall ratio {w['measured_wall_ratio']:.2f}; "
              f"response workload {w['response_workload_euler']} / {w['response_workload_res']}")
    for i, r in enumerate(res.get("batch") or []):
        seq, con = r["sequential"]["wall_ms"], r["concurrent"]["wall_ms"]
        print(f"batch of {p['batch']} euler, round {i + 1}: sequential {seq:.0f} ms, concurrent {con:.0f} ms "
              f"({(1 - con / seq) * 100:+.1f}% sooner); exec sums {r['sequential']['exec_sum_ms']:.0f} / "
              f"{r['concurrent']['exec_sum_ms']:.0f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bridge-url", required=True)
    p.add_argument("--comfyui-url", help="for the device name and KSampler's sampler lists")
    p.add_argument("--ckpt", default="sdxl_random.safetensors")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--euler", type=int, default=12, help="sequential euler requests measured")
    p.add_argument("--warmup", type=int, default=1, help="euler requests after the first, not measured")
    p.add_argument("--res", type=int, default=5, help="sequential res_2s requests measured (0: skip)")
    p.add_argument("--res-sampler", default="res_2s")
    p.add_argument("--res-scheduler", default="beta57")
    p.add_argument("--batch", type=int, default=5, help="prompts per batch in (c) (1: skip)")
    p.add_argument("--rounds", type=int, default=2, help="sequential/concurrent pairs in (c)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    res = asyncio.run(run(a))
    res["params"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in res["params"].items()}
    report(res)
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
