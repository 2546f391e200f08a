"""API-format graphs the real tier runs: small, and cheap enough for a 2-core CPU."""

from __future__ import annotations

from typing import Any

SD15 = "sd15_random.safetensors"
PROMPT = "a red fox in the snow"


def weightless(batch: int = 2, width: int = 64, height: int = 48) -> dict[str, Any]:
    """No model at all: EmptyImage -> ImageInvert -> SaveImage (the recorded trace's graph)."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": batch, "color": 0x336699}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "real/w"}},
    }


def load_invert_save(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "real/in"}},
    }


def _sd15_front(ckpt: str, size: int) -> dict[str, Any]:
    """Loader, both text encodes and the empty latent: shared (so cached) across prompts."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def _decode_save(sampler_id: str) -> dict[str, Any]:
    return {
        "6": {"class_type": "VAEDecode", "inputs": {"samples": [sampler_id, 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "real/t2i"}},
    }


def sd15_t2i(
    *,
    steps: int = 2,
    seed: int = 1,
    sampler: str = "euler",
    scheduler: str = "normal",
    ckpt: str = SD15,
    size: int = 64,
) -> dict[str, Any]:
    graph = _sd15_front(ckpt, size)
    graph["5"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
        "scheduler": scheduler, "denoise": 1.0,
    }}
    graph.update(_decode_save("5"))
    return graph


def sd15_clownshark(*, steps: int = 2, seed: int = 1, size: int = 64) -> dict[str, Any]:
    """RES4LYF's own sampler node: exponential/res_2s with beta57, two model calls a step."""
    graph = _sd15_front(SD15, size)
    graph["5"] = {"class_type": "ClownsharKSampler_Beta", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "eta": 0.5, "sampler_name": "exponential/res_2s", "scheduler": "beta57",
        "steps": steps, "steps_to_run": -1, "denoise": 1.0, "cfg": 5.5, "seed": seed,
        "sampler_mode": "standard", "bongmath": True,
    }}
    graph.update(_decode_save("5"))
    return graph
