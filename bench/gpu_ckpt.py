"""Build a random-weight SD1.5/SDXL checkpoint on the GPU, for bench/gpu_check.sh.

tools/make_checkpoints.py builds on the CPU with one seeded generator: about 70 M
normal samples a second, so the 3.5 B parameters of SDXL take minutes, which a 15-minute
GPU lease cannot spare. This reuses that tool's architecture facts and read-back check
but builds the modules on `--device` (cuda: seconds). Only the pictures differ from a
real checkpoint; keys, shapes and compute are the same.

    python bench/gpu_ckpt.py --comfyui-path ComfyUI --out models/checkpoints --arch sdxl \
        [--device cuda] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _randomize(module: Any, gens: dict[Any, Any], seed: int) -> int:
    """Norms at identity, biases at zero, weights N(0, 1/fan_in): finite activations in fp16.

    One seeded generator per device: ComfyUI keeps some modules (the VAE) on the CPU
    whatever device it is given, and a generator only draws on its own device.
    """
    import torch

    count = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            count += p.numel()
            if p.ndim <= 1:
                p.fill_(1.0) if (name.endswith("weight") or "scale" in name) else p.zero_()
                continue
            std = 1.0 / math.sqrt(max(math.prod(p.shape[1:]), 1))
            if p.device not in gens:
                gens[p.device] = torch.Generator(device=p.device).manual_seed(seed + len(gens))
            noise = torch.randn(p.shape, generator=gens[p.device], dtype=torch.float32, device=p.device)
            p.copy_(noise.mul_(std).to(p.dtype))
    return count


def build(mc: Any, arch: str, out_dir: Path, device_name: str, dtype_name: str, seed: int) -> dict[str, Any]:
    import torch

    import comfy.model_detection
    import comfy.sd
    import comfy.utils

    spec = mc.ARCHS[arch]
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    dev = torch.device(device_name)
    gen: dict[Any, Any] = {}
    t0 = time.monotonic()

    config = comfy.model_detection.model_config_from_unet_config(dict(spec["unet"]))
    if config is None or type(config).__name__ != spec["class"]:
        raise SystemExit(f"{arch}: this ComfyUI maps the config to {type(config).__name__}")
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=dev)
    n_unet = _randomize(model.diffusion_model, gen, seed)
    clip = comfy.sd.CLIP(
        config.clip_target(state_dict={}),
        model_options={"dtype": dtype, "initial_device": dev, "load_device": dev, "offload_device": dev},
    )
    n_clip = _randomize(clip.cond_stage_model, gen, seed)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # an empty VAE warns about every key
    try:
        vae = comfy.sd.VAE(sd={}, device=dev, config={"params": mc.VAE_PARAMS}, dtype=dtype)
    finally:
        logging.getLogger().setLevel(level)
    n_vae = _randomize(vae.first_stage_model, gen, seed)
    built_s = time.monotonic() - t0

    sd = model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    for k, t in sd.items():
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        sd[k] = t.to("cpu").contiguous()
    del model, clip, vae
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / spec["file"]
    tmp = final.with_name(f".partial-{os.getpid()}-{final.name}")
    meta = {"comfy_vast_worker": json.dumps({"arch": arch, "seed": seed, "dtype": dtype_name, "random_weights": True})}
    comfy.utils.save_torch_file(sd, str(tmp), metadata=meta)
    del sd
    mc._verify(tmp, spec)  # ComfyUI's detector must pick the intended class from the keys
    os.replace(tmp, final)
    return {
        "arch": arch,
        "path": str(final),
        "bytes": final.stat().st_size,
        "params": n_unet + n_clip + n_vae,
        "build_s": round(built_s, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "device": device_name,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui-path", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default="sdxl", choices=["sd15", "sdxl"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    sys.path.insert(0, str(a.comfyui_path.resolve()))
    sys.path.insert(0, str(ROOT / "tools"))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = a.device == "cpu"
    import make_checkpoints as mc  # the REAL helper's tool: ARCHS, VAE_PARAMS, _verify

    print(json.dumps(build(mc, a.arch, a.out, a.device, a.dtype, a.seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
