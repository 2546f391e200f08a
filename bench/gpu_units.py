"""Do load units predict time across models? Measured against a real ComfyUI behind the bridge.

    python bench/gpu_units.py --bridge-url http://127.0.0.1:18288 --models-dir ComfyUI/models \
        --sd15 sd15_random.safetensors --sdxl sdxl_random.safetensors [--runs 3] [--json-out units.json]

SD1.5 512x512 and SDXL 1024x1024, each with euler and RES4LYF's res_2s/beta57, batch 1
and 4, 20 steps, cfg 7 (bench/gpu_measure.py's graph). Per case: one warm-up (it may load
the model), then `--runs` requests; measured = the median of ComfyUI's own execution time
(timings.execution_ms). Predicted = units / units of the benchmark case (SDXL euler
batch 1, the manifest's benchmark) x its measured time, units from worker/workload.py
with the model family read from each checkpoint file (worker/model_family.py). The
target: every case within 25%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gpu_measure import Bench, graph  # noqa: E402
from worker.model_family import ModelFamilies  # noqa: E402
from worker.workload import WorkloadModel  # noqa: E402

SAMPLERS = (("euler", "normal"), ("res_2s", "beta57"))


def cases(a: argparse.Namespace) -> list[dict]:
    return [{"model": m, "ckpt": ckpt, "size": size, "sampler": s, "scheduler": sch, "batch": b}
            for m, ckpt, size in (("SDXL", a.sdxl, 1024), ("SD1.5", a.sd15, 512)) if ckpt
            for s, sch in SAMPLERS for b in (1, 4)]


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bridge-url", required=True)
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--sd15", default="sd15_random.safetensors")
    p.add_argument("--sdxl", default="sdxl_random.safetensors")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    model = WorkloadModel(families=ModelFamilies([a.models_dir]))
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as s:
        for c in cases(a):
            bench = Bench(SimpleNamespace(bridge_url=a.bridge_url, ckpt=c["ckpt"], size=c["size"], steps=a.steps,
                                          cfg=7.0), s)
            g = graph(c["ckpt"], c["size"], a.steps, c["sampler"], c["scheduler"], 7.0)
            g["5"]["inputs"]["batch_size"] = c["batch"]

            def job() -> dict:
                j = json.loads(json.dumps(g))
                j["3"]["inputs"]["seed"] = next(__import__("gpu_measure")._seeds)
                return j

            await bench.one(job())  # warm-up
            times = [(await bench.one(job()))["exec_ms"] / 1000 for _ in range(a.runs)]
            rows.append({**c, "units": model.graph_units(g), "measured_s": statistics.median(times),
                         "family": model.families.family("checkpoints", c["ckpt"])})  # type: ignore[union-attr]
            print(f"  {c['model']} {c['size']} {c['sampler']} b{c['batch']}: {rows[-1]['measured_s']:.3f} s", flush=True)
    ref = next(r for r in rows if r["model"] == "SDXL" and r["sampler"] == "euler" and r["batch"] == 1)
    print(f"\n{'case':<28} {'family':>6} {'units':>7} {'measured s':>11} {'predicted s':>12} {'error':>7}")
    for r in rows:
        r["predicted_s"] = r["units"] / ref["units"] * ref["measured_s"]
        r["error"] = r["predicted_s"] / r["measured_s"] - 1
        name = f"{r['model']} {r['size']}² {r['sampler']} b{r['batch']}"
        print(f"{name:<28} {r['family']:>6} {r['units']:>7.2f} {r['measured_s']:>11.3f} {r['predicted_s']:>12.3f} "
              f"{r['error']:>+7.0%}")
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst error {worst:.0%} (target: within 25%, relative to SDXL 1024² euler batch 1)")
    if a.json_out:
        a.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
