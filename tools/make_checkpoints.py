"""Build random-weight checkpoints in the real SD1.5 / SDXL layouts, with ComfyUI's own classes.

Why: the real-ComfyUI test tier needs a checkpoint that ComfyUI detects, loads and samples
exactly like a real one (same keys, shapes and compute), but real weights are gigabytes
from the internet and this machine has none. Random weights of the right architecture
give the same code paths and timings; only the pictures are noise.

Run it with ComfyUI's python; nothing of ComfyUI is copied, its classes are imported
from --comfyui-path at run time:

    /path/to/venv/bin/python tools/make_checkpoints.py --comfyui-path /path/to/ComfyUI \
        --out /path/to/models/checkpoints [--arch sd15 sdxl] [--seed 0]

Each file is written atomically (a temporary name, then a rename), then read back and
checked: ComfyUI's model detection must pick the intended model class from its keys.
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

# Architecture facts of the public models (ComfyUI's own "unet_config" vocabulary).
# ComfyUI's detector must map them back to the named class, which main() verifies.
ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {
        "class": "SD15",
        "file": "sd15_random.safetensors",
        "unet": {
            "use_checkpoint": False,
            "image_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 320,
            "num_res_blocks": [2, 2, 2, 2],
            "channel_mult": [1, 2, 4, 4],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "transformer_depth_middle": 1,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "use_spatial_transformer": True,
            "use_linear_in_transformer": False,
            "legacy": False,
            "adm_in_channels": None,
            "context_dim": 768,
            "num_heads": 8,
            "use_temporal_attention": False,
            "use_temporal_resblock": False,
        },
    },
    "sdxl": {
        "class": "SDXL",
        "file": "sdxl_random.safetensors",
        "unet": {
            "use_checkpoint": False,
            "image_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 320,
            "num_res_blocks": [2, 2, 2],
            "channel_mult": [1, 2, 4],
            "transformer_depth": [0, 0, 2, 2, 10, 10],
            "transformer_depth_middle": 10,
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "use_spatial_transformer": True,
            "use_linear_in_transformer": True,
            "legacy": False,
            "num_classes": "sequential",
            "adm_in_channels": 2816,
            "context_dim": 2048,
            "num_head_channels": 64,
            "use_temporal_attention": False,
            "use_temporal_resblock": False,
        },
    },
}

# The KL autoencoder shared by SD1.x and SDXL (4 latent channels, 8x downscale).
VAE_PARAMS = {
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
    "embed_dim": 4,
}


def _import_comfy(comfyui_path: Path) -> None:
    """Put ComfyUI on sys.path and make it choose the CPU before its device probing runs."""
    sys.path.insert(0, str(comfyui_path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True


def _randomize(module: Any, generator: Any) -> int:
    """Fill every parameter: norms at identity, biases at zero, weights N(0, 1/fan_in).

    ComfyUI builds its layers without initialising them (the weights are normally loaded
    over them), so without this the tensors hold whatever memory was there, NaNs included.
    The scale keeps activations finite through the whole network, in fp16 too.
    """
    import torch

    count = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            count += p.numel()
            if p.ndim <= 1:
                if name.endswith("weight") or "scale" in name:
                    p.fill_(1.0)
                else:
                    p.zero_()
                continue
            fan_in = math.prod(p.shape[1:])
            std = 1.0 / math.sqrt(max(fan_in, 1))
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_(noise.mul_(std).to(p.dtype))
    return count


def build(arch: str, out_dir: Path, seed: int, dtype_name: str) -> Path:
    """Make one checkpoint and return its path."""
    import torch

    import comfy.model_detection
    import comfy.sd
    import comfy.utils

    spec = ARCHS[arch]
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    started = time.monotonic()

    model_config = comfy.model_detection.model_config_from_unet_config(dict(spec["unet"]))
    if model_config is None or type(model_config).__name__ != spec["class"]:
        raise SystemExit(
            f"{arch}: ComfyUI maps this unet config to {type(model_config).__name__}, "
            f"expected {spec['class']}: this ComfyUI version is not supported by the tool"
        )
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=cpu)
    n_unet = _randomize(model.diffusion_model, gen)

    clip_target = model_config.clip_target(state_dict={})
    clip = comfy.sd.CLIP(
        clip_target,
        model_options={"dtype": dtype, "initial_device": cpu, "load_device": cpu, "offload_device": cpu},
    )
    n_clip = _randomize(clip.cond_stage_model, gen)

    # Built empty on purpose: silence ComfyUI's warning that every VAE key is missing.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        vae = comfy.sd.VAE(sd={}, device=cpu, config={"params": VAE_PARAMS}, dtype=dtype)
    finally:
        logging.getLogger().setLevel(quiet)
    n_vae = _randomize(vae.first_stage_model, gen)

    sd = model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    for k, t in sd.items():
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        sd[k] = t.contiguous()

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / spec["file"]
    # The temporary name keeps the .safetensors suffix: ComfyUI picks its loader by suffix.
    tmp = final.with_name(f".partial-{os.getpid()}-{final.name}")
    metadata = {
        "comfy_vast_worker": json.dumps(
            {"arch": arch, "seed": seed, "dtype": dtype_name, "random_weights": True}
        )
    }
    comfy.utils.save_torch_file(sd, str(tmp), metadata=metadata)
    del sd, model, clip, vae
    _verify(tmp, spec)
    os.replace(tmp, final)
    print(
        json.dumps(
            {
                "arch": arch,
                "path": str(final),
                "bytes": final.stat().st_size,
                "params": {"unet": n_unet, "clip": n_clip, "vae": n_vae},
                "seconds": round(time.monotonic() - started, 1),
            }
        ),
        flush=True,
    )
    return final


def _verify(path: Path, spec: dict[str, Any]) -> None:
    """Read the file back the way CheckpointLoaderSimple would begin to: detect its class."""
    import comfy.model_detection
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    config = comfy.model_detection.model_config_from_unet(sd, prefix)
    found = type(config).__name__ if config is not None else None
    if found != spec["class"]:
        path.unlink(missing_ok=True)
        raise SystemExit(f"{path.name}: ComfyUI detects {found}, expected {spec['class']}")
    has_vae = any(k.startswith("first_stage_model.") for k in sd)
    has_text = any(k.startswith(("cond_stage_model.", "conditioner.")) for k in sd)
    if not (has_vae and has_text):
        path.unlink(missing_ok=True)
        raise SystemExit(f"{path.name}: saved without its VAE or text encoder keys")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--comfyui-path",
        type=Path,
        default=os.environ.get("COMFYUI_PATH"),
        help="a ComfyUI install (default: $COMFYUI_PATH)",
    )
    p.add_argument("--out", type=Path, required=True, help="a models/checkpoints folder")
    p.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=["sd15"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["fp16", "fp32", "bf16"], default="fp16")
    p.add_argument("--force", action="store_true", help="rebuild files that already exist")
    a = p.parse_args(argv)
    if a.comfyui_path is None or not (Path(a.comfyui_path) / "comfy").is_dir():
        p.error("--comfyui-path (or COMFYUI_PATH) must name a ComfyUI install")
    _import_comfy(Path(a.comfyui_path).resolve())
    for arch in a.arch:
        target = a.out / ARCHS[arch]["file"]
        if target.exists() and not a.force:
            print(json.dumps({"arch": arch, "path": str(target), "skipped": "exists"}), flush=True)
            continue
        build(arch, a.out, a.seed, a.dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
