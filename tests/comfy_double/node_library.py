"""The double's node library: /object_info entries shaped like ComfyUI v0.3.64's (plus
RES4LYF 7750bf7's samplers) and small async implementations that write real files.

Each node is a `NodeDef`: its INPUT_TYPES (a function of the double's folders, so combo
lists follow the files on disk like ComfyUI's), return types and an async `run`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import struct
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from PIL import Image, ImageOps, ImageSequence

from . import images as im

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF

# comfy.samplers.KSampler.SAMPLERS / SCHEDULERS at v0.3.64, then what RES4LYF 7750bf7 adds.
KSAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
RES4LYF_KSAMPLER_NAMES = [
    "res_2m", "res_3m", "res_2s", "res_3s", "res_5s", "res_6s", "res_2m_ode", "res_3m_ode", "res_2s_ode",
    "res_3s_ode", "res_5s_ode", "res_6s_ode", "deis_2m", "deis_3m", "deis_2m_ode", "deis_3m_ode", "rk_beta",
]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]
RES4LYF_SCHEDULERS = ["bong_tangent", "beta57"]
# RES4LYF's own sampler list (ClownsharKSampler_Beta), a representative subset.
RES4LYF_RK_NAMES = [
    "none", "res_2m", "res_3m", "dpmpp_2m", "dpmpp_3m", "abnorsett_2m", "abnorsett_3m", "deis_2m", "deis_3m",
    "res_2s", "res_3s", "res_5s", "res_6s", "res_8s", "dpmpp_2s", "dpmpp_3s", "ddim", "ralston_2s", "ralston_3s",
    "midpoint_2s", "heun_2s", "heun_3s", "rk4_4s", "euler", "gauss-legendre_2s", "radau_iia_3s",
]

MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
    "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "custom_nodes",
    "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class NodeRuntime(Protocol):
    """What a running node may ask of the executor (see executor.RunContext)."""

    node_id: str
    prompt_id: str
    folders: "Folders"
    prompt: dict
    extra_data: dict
    output_dir: Path
    input_dir: Path
    temp_dir: Path

    async def work(self, share: float = 1.0) -> None: ...
    async def progress(self, value: int, total: int, preview: tuple[str, im.ImageSpec] | None = None,
                       force_preview: bool = False) -> None: ...
    def check_interrupt(self) -> None: ...
    def previews_enabled(self) -> bool: ...


@dataclass(frozen=True)
class Model:
    ckpt_name: str

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object ({self.ckpt_name})>"


@dataclass(frozen=True)
class Clip:
    ckpt_name: str


@dataclass(frozen=True)
class Vae:
    ckpt_name: str


@dataclass(frozen=True)
class Conditioning:
    text: str


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch_size: int
    seed: int | None = None


@dataclass(frozen=True)
class Audio:
    seconds: float
    frequency: float
    sample_rate: int = 44100


@dataclass
class NodeResult:
    outputs: tuple = ()
    ui: dict | None = None


RunFn = Callable[[NodeRuntime, dict], Awaitable[NodeResult]]


@dataclass
class NodeDef:
    name: str
    input_types: Callable[["Folders"], dict]
    return_types: tuple[str, ...]
    run: RunFn
    category: str
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    return_names: tuple[str, ...] | None = None
    output_tooltips: tuple[str, ...] | None = None
    python_module: str = "nodes"
    # inputs handed to a VALIDATE_INPUTS-like hook (their combo check is skipped, as in ComfyUI)
    validate: Callable[["Folders", dict], Any] | None = None
    validate_inputs: tuple[str, ...] = ()
    # IS_CHANGED: a value folded into the cache signature (None: not defined)
    is_changed: Callable[["Folders", dict], Any] | None = None
    sampler: bool = False
    extra_info: dict = field(default_factory=dict)

    def info(self, folders: "Folders") -> dict:
        """The /object_info entry, built like server.node_info()."""
        inputs = self.input_types(folders)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": {k: list(v.keys()) for k, v in inputs.items()},
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.return_names or self.return_types),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.output_tooltips:
            info["output_tooltips"] = list(self.output_tooltips)
        info.update(self.extra_info)
        return json.loads(json.dumps(info))  # tuples -> lists, as on the wire


@dataclass
class Folders:
    """The double's directory layout (ComfyUI's folder_paths, reduced)."""

    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_files(self, folder: str) -> list[str]:
        base = self.models / folder
        if not base.is_dir():
            return []
        out = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return sorted(out)

    def input_images(self) -> list[str]:
        if not self.input.is_dir():
            return []
        return sorted(p.name for p in self.input.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    def annotated(self, name: str, default: Path | None = None) -> Path:
        for suffix, base in (("[output]", self.output), ("[input]", self.input), ("[temp]", self.temp)):
            if name.endswith(suffix):
                return base / name[: -len(suffix)].rstrip()
        return (default or self.input) / name


# --------------------------------------------------------------------------- helpers

def _save_path(out_dir: Path, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """folder_paths.get_save_image_path: subfolder from the prefix, counter after the
    highest existing `{prefix}_NNNNN_` file."""
    if "%" in filename_prefix:
        now = time.localtime()
        for k, v in (("%width%", str(width)), ("%height%", str(height)), ("%year%", str(now.tm_year)),
                     ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                     ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                     ("%second%", f"{now.tm_sec:02}")):
            filename_prefix = filename_prefix.replace(k, v)
    norm = os.path.normpath(filename_prefix)
    subfolder = os.path.dirname(norm)
    filename = os.path.basename(norm)
    full = (out_dir / subfolder).resolve()
    base = out_dir.resolve()
    if os.path.commonpath((str(base), str(full))) != str(base):
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {full}\n         output_dir: {base}"
        )
    counter = 1
    if full.is_dir():
        best = 0
        n = len(filename)
        for existing in os.listdir(full):
            if os.path.normcase(existing[:n]) != os.path.normcase(filename) or existing[n : n + 1] != "_":
                continue
            try:
                digits = int(existing[n + 1 :].split("_")[0])
            except ValueError:
                digits = 0
            best = max(best, digits)
        counter = best + 1
    else:
        full.mkdir(parents=True, exist_ok=True)
    return full, filename, counter, subfolder


def _png_text(rt: NodeRuntime) -> dict[str, str]:
    text = {"prompt": json.dumps(rt.prompt)}
    for k, v in (rt.extra_data.get("extra_pnginfo") or {}).items():
        text[k] = json.dumps(v)
    return text


def _images_arg(name: str = "images", tooltip: str | None = None) -> tuple:
    return ("IMAGE", {"tooltip": tooltip} if tooltip else {})


# --------------------------------------------------------------------------- image nodes

async def _empty_image(rt: NodeRuntime, a: dict) -> NodeResult:
    spec = im.solid(a["width"], a["height"], a.get("color", 0))
    return NodeResult((im.ImageBatch((spec,) * a.get("batch_size", 1)),))


async def _noise_image(rt: NodeRuntime, a: dict) -> NodeResult:
    seed = a.get("seed", 0)
    frames = tuple(im.noise(a["width"], a["height"], seed + i) for i in range(a.get("batch_size", 1)))
    return NodeResult((im.ImageBatch(frames),))


async def _invert(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((im.ImageBatch(tuple(im.inverted(f) for f in a["image"].frames)),))


def _passthrough(tag: str) -> RunFn:
    async def run(rt: NodeRuntime, a: dict) -> NodeResult:
        return NodeResult((im.ImageBatch(tuple(im.tagged(f, tag + repr(sorted((k, v) for k, v in a.items() if k != "image"))) for f in a["image"].frames)),))

    return run


async def _silent_wait(rt: NodeRuntime, a: dict) -> NodeResult:
    """A slow node with no progress bar (a video VAE decode, an upscaler, a model loading
    from a network volume): it sends no event while it works, and an interrupt is seen
    only once it returns, like a long CUDA call."""
    await asyncio.sleep(float(a.get("seconds", 1.0)))
    return NodeResult((a["images"],))


async def _primitive(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((a["value"],))


def _load_image_sync(path: Path) -> tuple[im.ImageBatch, str]:
    img = Image.open(path)
    frames = []
    for i, frame in enumerate(ImageSequence.Iterator(img)):
        frame = ImageOps.exif_transpose(frame).convert("RGB")
        if frames and frame.size != (frames[0].width, frames[0].height):
            continue
        frames.append(im.from_pil(frame, ("load", str(path), path.stat().st_mtime_ns, i)))
    return im.ImageBatch(tuple(frames)), "MASK"


async def _load_image(rt: NodeRuntime, a: dict) -> NodeResult:
    path = rt.folders.annotated(str(a["image"]))
    batch, mask = await asyncio.to_thread(_load_image_sync, path)
    return NodeResult((batch, mask))


def _file_hash(folders: Folders, a: dict) -> str:
    p = folders.annotated(str(a.get("image", "")))
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return f"nan-{uuid.uuid4().hex}"  # ComfyUI: NaN, never equal: always re-run


def _save_images_sync(rt: NodeRuntime, batch: im.ImageBatch, prefix: str, out_dir: Path, kind: str, level: int, meta: bool) -> list[dict]:
    first = batch.frames[0]
    full, filename, counter, subfolder = _save_path(out_dir, prefix, first.width, first.height)
    text = _png_text(rt) if meta else None
    results = []
    for batch_number, spec in enumerate(batch.frames):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        (full / name).write_bytes(im.png_bytes(spec, level, text))
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


async def _save_image(rt: NodeRuntime, a: dict) -> NodeResult:
    results = await asyncio.to_thread(_save_images_sync, rt, a["images"], a.get("filename_prefix", "ComfyUI"), rt.output_dir, "output", 4, True)
    return NodeResult((), {"images": results})


async def _preview_image(rt: NodeRuntime, a: dict) -> NodeResult:
    import random as _r
    prefix = "ComfyUI_temp_" + "".join(_r.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    results = await asyncio.to_thread(_save_images_sync, rt, a["images"], prefix, rt.temp_dir, "temp", 1, True)
    return NodeResult((), {"images": results})


async def _save_ws(rt: NodeRuntime, a: dict) -> NodeResult:
    batch: im.ImageBatch = a["images"]
    n = len(batch)
    for step, spec in enumerate(batch.frames):
        await rt.progress(step, n, ("PNG", spec), force_preview=True)
    return NodeResult((), {})


def _save_webp_sync(rt: NodeRuntime, a: dict) -> list[dict]:
    batch: im.ImageBatch = a["images"]
    first = batch.frames[0]
    full, filename, counter, subfolder = _save_path(rt.output_dir, a.get("filename_prefix", "ComfyUI"), first.width, first.height)
    frames = [f.render() for f in batch.frames]
    name = f"{filename}_{counter:05}_.webp"
    frames[0].save(full / name, save_all=True, append_images=frames[1:], duration=int(1000.0 / a.get("fps", 6.0)),
                   lossless=a.get("lossless", True), quality=a.get("quality", 80), method=0)
    return [{"filename": name, "subfolder": subfolder, "type": "output"}]


async def _save_webp(rt: NodeRuntime, a: dict) -> NodeResult:
    results = await asyncio.to_thread(_save_webp_sync, rt, a)
    return NodeResult((), {"images": results, "animated": [len(a["images"]) > 1]})


def _video_sync(rt: NodeRuntime, a: dict) -> dict:
    batch: im.ImageBatch = a["images"]
    first = batch.frames[0]
    save = a.get("save_output", True)
    out_dir = rt.output_dir if save else rt.temp_dir
    full, filename, counter, subfolder = _save_path(out_dir, a.get("filename_prefix", "AnimateDiff"), first.width, first.height)
    fmt = a.get("format", "image/gif")
    frames = [f.render() for f in batch.frames]
    rate = float(a.get("frame_rate", 8))
    if fmt == "image/gif":
        name = f"{filename}_{counter:05}.gif"
        frames[0].save(full / name, save_all=True, append_images=frames[1:], duration=int(1000 / rate), loop=a.get("loop_count", 0))
    elif fmt == "image/webp":
        name = f"{filename}_{counter:05}.webp"
        frames[0].save(full / name, save_all=True, append_images=frames[1:], duration=int(1000 / rate), lossless=True, method=0)
    else:  # video/*: no encoder here; an MP4 box skeleton (ftyp + empty mdat) stands in
        name = f"{filename}_{counter:05}.mp4"
        ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
        mdat = struct.pack(">I", 8) + b"mdat"
        (full / name).write_bytes(ftyp + mdat)
    return {"filename": name, "subfolder": subfolder, "type": "output" if save else "temp", "format": fmt,
            "frame_rate": rate, "workflow": f"{filename}_{counter:05}.png", "fullpath": str(full / name)}


async def _video_combine(rt: NodeRuntime, a: dict) -> NodeResult:
    entry = await asyncio.to_thread(_video_sync, rt, a)
    return NodeResult(((True, [entry["fullpath"]]),), {"gifs": [entry]})


async def _sine_audio(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((Audio(float(a.get("seconds", 1.0)), float(a.get("frequency", 440.0))),))


def _audio_sync(rt: NodeRuntime, a: dict) -> list[dict]:
    audio: Audio = a["audio"]
    full, filename, counter, subfolder = _save_path(rt.output_dir, a.get("filename_prefix", "audio/ComfyUI"))
    name = f"{filename}_{counter:05}_.wav"
    n = int(audio.seconds * audio.sample_rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * audio.frequency * i / audio.sample_rate))) for i in range(n))
    with wave.open(str(full / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(frames)
    return [{"filename": name, "subfolder": subfolder, "type": "output"}]


async def _save_audio(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((), {"audio": await asyncio.to_thread(_audio_sync, rt, a)})


# --------------------------------------------------------------------------- SD-shaped nodes

async def _ckpt(rt: NodeRuntime, a: dict) -> NodeResult:
    name = a["ckpt_name"]
    return NodeResult((Model(name), Clip(name), Vae(name)))


async def _clip_encode(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((Conditioning(a.get("text", "")),))


async def _empty_latent(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((Latent(a["width"], a["height"], a.get("batch_size", 1)),))


def _multistage(sampler_name: str) -> bool:
    """RES4LYF's res_Ns samplers report the last step twice (seen in the trace)."""
    base = sampler_name.split("/")[-1]
    return base.startswith("res_") and base.split("_")[1].endswith("s")


def _sampler(seed_key: str, steps_fn: Callable[[dict], int] = lambda a: int(a.get("steps", 20))) -> RunFn:
    async def run(rt: NodeRuntime, a: dict) -> NodeResult:
        latent: Latent | None = a.get("latent_image")
        if latent is None:
            latent = Latent(1024, 1024, 1)
        seed = int(a.get(seed_key, 0) or 0)
        steps = max(1, steps_fn(a))
        reports = list(range(1, steps + 1))
        if _multistage(str(a.get("sampler_name", ""))):
            reports.append(steps)
        for value in reports:
            await rt.work(1.0 / len(reports))
            preview = None
            if rt.previews_enabled():
                preview = ("JPEG", im.noise(min(latent.width, 512), min(latent.height, 512), seed * 1000 + value))
            await rt.progress(value, steps, preview)
        out = Latent(latent.width, latent.height, latent.batch_size, seed)
        return NodeResult((out, out, None))

    return run


async def _vae_decode(rt: NodeRuntime, a: dict) -> NodeResult:
    lat: Latent = a["samples"]
    seed = lat.seed or 0
    return NodeResult((im.ImageBatch(tuple(im.noise(lat.width, lat.height, seed + i) for i in range(lat.batch_size))),))


# --------------------------------------------------------------------------- the library

def _c(items: list, extra: dict | None = None) -> tuple:
    return (list(items), extra or {})


def _ksampler_inputs(f: Folders) -> dict:
    return {
        "required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}),
            "sampler_name": (KSAMPLER_NAMES + RES4LYF_KSAMPLER_NAMES, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}),
            "scheduler": (SCHEDULER_NAMES + RES4LYF_SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}),
            "positive": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}),
            "negative": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}),
        }
    }


def _ksampler_adv_inputs(f: Folders) -> dict:
    return {"required": {
        "model": ("MODEL",),
        "add_noise": (["enable", "disable"],),
        "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (KSAMPLER_NAMES + RES4LYF_KSAMPLER_NAMES,),
        "scheduler": (SCHEDULER_NAMES + RES4LYF_SCHEDULERS,),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",),
        "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
        "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
        "return_with_leftover_noise": (["disable", "enable"],),
    }}


def _clownshark_inputs(f: Folders) -> dict:
    return {
        "required": {
            "eta": ("FLOAT", {"default": 0.5, "min": -100.0, "max": 100.0, "step": 0.01, "round": False, "tooltip": "Calculated noise amount to be added, then removed, after each step."}),
            "sampler_name": (RES4LYF_RK_NAMES, {"default": "res_2m"}),
            "scheduler": (SCHEDULER_NAMES + RES4LYF_SCHEDULERS, {"default": "beta57"}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000}),
            "steps_to_run": ("INT", {"default": -1, "min": -1, "max": 10000}),
            "denoise": ("FLOAT", {"default": 1.0, "min": -10000, "max": 10000, "step": 0.01}),
            "cfg": ("FLOAT", {"default": 5.5, "min": -100.0, "max": 100.0, "step": 0.01, "round": False}),
            "seed": ("INT", {"default": 0, "min": -1, "max": MAX_SEED}),
            "sampler_mode": (["unsample", "standard", "resample"], {"default": "standard"}),
            "bongmath": ("BOOLEAN", {"default": True}),
        },
        "optional": {
            "model": ("MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "sigmas": ("SIGMAS",),
            "guides": ("GUIDES",),
            "options": ("OPTIONS", {}),
        },
    }


def _chainsampler_inputs(f: Folders) -> dict:
    """RES4LYF 7750bf7 beta/samplers.py ClownsharkChainsampler_Beta (continues a chain)."""
    return {
        "required": {
            "eta": ("FLOAT", {"default": 0.5, "min": -100.0, "max": 100.0, "step": 0.01, "round": False}),
            "sampler_name": (RES4LYF_KSAMPLER_NAMES + KSAMPLER_NAMES, {"default": "res_2s"}),
            "steps_to_run": ("INT", {"default": -1, "min": -1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 5.5, "min": -10000.0, "max": 10000.0, "step": 0.01, "round": False}),
            "sampler_mode": (["unsample", "resample"], {"default": "resample"}),
            "bongmath": ("BOOLEAN", {"default": True}),
        },
        "optional": {
            "model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "sigmas": ("SIGMAS",), "latent_image": ("LATENT",), "guides": ("GUIDES",), "options": ("OPTIONS",),
        },
    }


def _clown_sampler_inputs(f: Folders) -> dict:
    """RES4LYF 7750bf7 beta/samplers.py ClownSampler_Beta (a SAMPLER for SamplerCustom)."""
    return {
        "required": {
            "eta": ("FLOAT", {"default": 0.5, "min": -100.0, "max": 100.0, "step": 0.01, "round": False}),
            "sampler_name": (RES4LYF_KSAMPLER_NAMES + KSAMPLER_NAMES, {"default": "res_2s"}),
            "seed": ("INT", {"default": -1, "min": -1, "max": 0xffffffffffffffff}),
            "bongmath": ("BOOLEAN", {"default": True}),
        },
        "optional": {"guides": ("GUIDES",), "options": ("OPTIONS", {})},
    }


async def _make_sampler(rt: NodeRuntime, a: dict) -> NodeResult:
    return NodeResult((("SAMPLER", a.get("sampler_name")),))


def _shark_inputs(f: Folders) -> dict:
    return {
        "required": {
            "scheduler": (SCHEDULER_NAMES + RES4LYF_SCHEDULERS, {"default": "beta57"}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000.0}),
            "steps_to_run": ("INT", {"default": -1, "min": -1, "max": 10000}),
            "denoise": ("FLOAT", {"default": 1.0, "min": -10000.0, "max": 10000.0, "step": 0.01}),
            "cfg": ("FLOAT", {"default": 5.5, "min": -10000.0, "max": 10000.0, "step": 0.01, "round": False, "tooltip": "Negative values use channelwise CFG."}),
            "seed": ("INT", {"default": 0, "min": -1, "max": MAX_SEED}),
            "sampler_mode": (["unsample", "standard", "resample"], {"default": "standard"}),
        },
        "optional": {
            "model": ("MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "sampler": ("SAMPLER",),
            "sigmas": ("SIGMAS",),
            "latent_image": ("LATENT",),
            "options": ("OPTIONS",),
        },
    }


def _steps_to_run(a: dict) -> int:
    steps = int(a.get("steps", 30))
    to_run = int(a.get("steps_to_run", -1))
    return steps if to_run < 0 else min(steps, max(1, to_run))


def _validate_load_image(folders: Folders, a: dict) -> Any:
    if not folders.annotated(str(a.get("image", ""))).exists():
        return "Invalid image file: {}".format(a.get("image"))
    return True


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def build_library() -> dict[str, NodeDef]:
    n: list[NodeDef] = [
        NodeDef("EmptyImage", lambda f: {"required": {
            "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
        }}, ("IMAGE",), _empty_image, "image"),
        NodeDef("DoubleNoiseImage", lambda f: {"required": {
            "width": ("INT", {"default": 1024, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            "height": ("INT", {"default": 1024, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED}),
        }}, ("IMAGE",), _noise_image, "image", display_name="Noise Image (double)",
            description="Test-double node: a seeded noise image whose PNG weighs like a real output.",
            python_module="custom_nodes.comfy_double"),
        NodeDef("ImageInvert", lambda f: {"required": {"image": ("IMAGE",)}}, ("IMAGE",), _invert, "image",
                display_name="Invert Image"),
        NodeDef("ImageBlur", lambda f: {"required": {
            "image": ("IMAGE",),
            "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
        }}, ("IMAGE",), _passthrough("blur"), "image/postprocessing", display_name="Image Blur",
            python_module="comfy_extras.nodes_post_processing"),
        NodeDef("ImageSharpen", lambda f: {"required": {
            "image": ("IMAGE",),
            "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
            "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
        }}, ("IMAGE",), _passthrough("sharpen"), "image/postprocessing", display_name="Image Sharpen",
            python_module="comfy_extras.nodes_post_processing"),
        NodeDef("SaveImage", lambda f: {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}),
            },
            "hidden": dict(_SAVE_HIDDEN),
        }, (), _save_image, "image", display_name="Save Image", output_node=True,
            description="Saves the input images to your ComfyUI output directory."),
        NodeDef("PreviewImage", lambda f: {"required": {"images": ("IMAGE",)}, "hidden": dict(_SAVE_HIDDEN)},
                (), _preview_image, "image", display_name="Preview Image", output_node=True,
                description="Saves the input images to your ComfyUI output directory."),
        NodeDef("LoadImage", lambda f: {"required": {"image": (f.input_images(), {"image_upload": True})}},
                ("IMAGE", "MASK"), _load_image, "image", display_name="Load Image",
                validate=_validate_load_image, validate_inputs=("image",), is_changed=_file_hash),
        NodeDef("WebcamCapture", lambda f: {"required": {
            "image": ("WEBCAM", {}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "capture_on_queue": ("BOOLEAN", {"default": True}),
        }}, ("IMAGE",), _load_image, "image", display_name="Webcam Capture",
            python_module="comfy_extras.nodes_webcam",
            validate=_validate_load_image, validate_inputs=("image",), is_changed=_file_hash),
        NodeDef("PrimitiveString", lambda f: {"required": {"value": ("STRING", {})}}, ("STRING",), _primitive,
                "utils/primitive", display_name="String", python_module="comfy_extras.nodes_primitive"),
        NodeDef("DoubleSilentWait", lambda f: {"required": {
            "images": ("IMAGE",),
            "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}),
        }}, ("IMAGE",), _silent_wait, "image", display_name="Silent Wait (double)",
            description="Test-double node: works `seconds` without sending any event, then passes its images on.",
            python_module="custom_nodes.comfy_double"),
        NodeDef("SaveImageWebsocket", lambda f: {"required": {"images": ("IMAGE",)}}, (), _save_ws, "api/image",
                output_node=True, python_module="custom_nodes.websocket_image_save",
                is_changed=lambda f, a: time.time()),
        NodeDef("CheckpointLoaderSimple", lambda f: {"required": {
            "ckpt_name": (f.model_files("checkpoints"), {"tooltip": "The name of the checkpoint (model) to load."}),
        }}, ("MODEL", "CLIP", "VAE"), _ckpt, "loaders", display_name="Load Checkpoint",
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            output_tooltips=("The model used for denoising latents.",
                             "The CLIP model used for encoding text prompts.",
                             "The VAE model used for encoding and decoding images to and from latent space.")),
        NodeDef("CLIPTextEncode", lambda f: {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        }}, ("CONDITIONING",), _clip_encode, "conditioning", display_name="CLIP Text Encode (Prompt)",
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
            output_tooltips=("A conditioning containing the embedded text used to guide the diffusion model.",)),
        NodeDef("EmptyLatentImage", lambda f: {"required": {
            "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The width of the latent images in pixels."}),
            "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The height of the latent images in pixels."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "The number of latent images in the batch."}),
        }}, ("LATENT",), _empty_latent, "latent", display_name="Empty Latent Image",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            output_tooltips=("The empty latent image batch.",)),
        NodeDef("KSampler", _ksampler_inputs, ("LATENT",), _sampler("seed"), "sampling", display_name="KSampler",
                description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
                output_tooltips=("The denoised latent.",), sampler=True),
        NodeDef("KSamplerAdvanced", _ksampler_adv_inputs, ("LATENT",), _sampler(
            "noise_seed", lambda a: max(1, min(int(a.get("end_at_step", 10000)), int(a.get("steps", 20))) - int(a.get("start_at_step", 0)))),
            "sampling", display_name="KSampler (Advanced)", sampler=True),
        NodeDef("VAEDecode", lambda f: {"required": {
            "samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
            "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."}),
        }}, ("IMAGE",), _vae_decode, "latent", display_name="VAE Decode",
            description="Decodes latent images back into pixel space images.", output_tooltips=("The decoded image.",)),
        NodeDef("ClownsharKSampler_Beta", _clownshark_inputs, ("LATENT", "LATENT", "OPTIONS"),
                _sampler("seed", _steps_to_run), "RES4LYF/samplers", return_names=("output", "denoised", "options"),
                python_module="custom_nodes.RES4LYF", sampler=True),
        NodeDef("SharkSampler_Beta", _shark_inputs, ("LATENT", "LATENT", "OPTIONS"),
                _sampler("seed", _steps_to_run), "RES4LYF/samplers", return_names=("output", "denoised", "options"),
                python_module="custom_nodes.RES4LYF", sampler=True),
        NodeDef("ClownsharkChainsampler_Beta", _chainsampler_inputs, ("LATENT", "LATENT", "OPTIONS"),
                _sampler("seed", _steps_to_run), "RES4LYF/samplers", return_names=("output", "denoised", "options"),
                python_module="custom_nodes.RES4LYF", sampler=True),
        NodeDef("ClownSampler_Beta", _clown_sampler_inputs, ("SAMPLER",), _make_sampler, "RES4LYF/samplers",
                return_names=("sampler",), python_module="custom_nodes.RES4LYF"),
        NodeDef("SaveAnimatedWEBP", lambda f: {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
                "method": (["default", "fastest", "slowest"],),
            },
            "hidden": dict(_SAVE_HIDDEN),
        }, (), _save_webp, "image/animation", output_node=True, python_module="comfy_extras.nodes_images"),
        NodeDef("VHS_VideoCombine", lambda f: {
            "required": {
                "images": ("IMAGE",),
                "frame_rate": ("FLOAT", {"default": 8, "min": 1, "step": 1}),
                "loop_count": ("INT", {"default": 0, "min": 0, "max": 100, "step": 1}),
                "filename_prefix": ("STRING", {"default": "AnimateDiff"}),
                "format": (["image/gif", "image/webp", "video/h264-mp4"],),
                "pingpong": ("BOOLEAN", {"default": False}),
                "save_output": ("BOOLEAN", {"default": True}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }, ("VHS_FILENAMES",), _video_combine, "Video Helper Suite 🎥🅥🅗🅢", output_node=True,
            display_name="Video Combine 🎥🅥🅗🅢 (double)", return_names=("Filenames",),
            python_module="custom_nodes.comfy_double"),
        NodeDef("DoubleSineAudio", lambda f: {"required": {
            "seconds": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 60.0, "step": 0.01}),
            "frequency": ("FLOAT", {"default": 440.0, "min": 1.0, "max": 20000.0, "step": 1.0}),
        }}, ("AUDIO",), _sine_audio, "audio", display_name="Sine Audio (double)",
            python_module="custom_nodes.comfy_double"),
        NodeDef("SaveAudio", lambda f: {
            "required": {
                "audio": ("AUDIO",),
                "filename_prefix": ("STRING", {"default": "audio/ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }, (), _save_audio, "audio", display_name="Save Audio (WAV in the double)", output_node=True,
            python_module="comfy_extras.nodes_audio"),
    ]
    return {d.name: d for d in n}


def extra_node(name: str, info: dict) -> NodeDef:
    """A node known only by its /object_info entry (object_info_extra): it validates like
    any other and, when run, returns opaque outputs (output nodes report no ui)."""
    inputs = info.get("input", {"required": {}})
    returns = tuple(info.get("output", ()))

    async def run(rt: NodeRuntime, a: dict) -> NodeResult:
        await rt.work(0.0)
        return NodeResult(tuple(f"<{t} from {name}>" for t in returns), {} if info.get("output_node") else None)

    return NodeDef(name, lambda f: inputs, returns, run, info.get("category", "custom"),
                   display_name=info.get("display_name"), description=info.get("description", ""),
                   output_node=bool(info.get("output_node", False)),
                   return_names=tuple(info["output_name"]) if info.get("output_name") else None,
                   python_module=info.get("python_module", "custom_nodes.extra"))
