"""Provision a worker from its manifest: ComfyUI, then custom node packs, then models.

Idempotent by construction: each step first looks at what is there (git HEADs, stamps of
installed requirements, verified-model records) and changes only what differs, so a
restarted container re-runs it in well under two seconds. `check_only` runs the same
looks and reports, changing nothing. A lock keeps two provisions of one ComfyUI apart
(a restart while the previous start is still downloading).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.errors import ProvisionFailed
from comfy_bridge.provision import comfyui_install, custom_nodes, downloader
from comfy_bridge.provision.manifest import Manifest

log = logs.get(__name__)

Step = Literal["comfyui", "custom_nodes", "models"]
STEPS: tuple[Step, ...] = ("comfyui", "custom_nodes", "models")
# Folders an extra_model_paths.yaml section lists besides the manifest's own.
STANDARD_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "clip_vision", "upscale_models", "embeddings",
                    "diffusion_models", "text_encoders", "unet", "clip", "style_models", "gligen",
                    "hypernetworks", "photomaker", "configs")
EXTRA_PATHS_FILE = "extra_model_paths.yaml"
EXTRA_PATHS_SECTION = "comfy_worker"

GOOD = {"ok", "installed", "updated", "downloaded", "written"}


class Item(BaseModel):
    step: str
    name: str
    status: str
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in GOOD


class ProvisionReport(BaseModel):
    check_only: bool
    items: list[Item] = []
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(i.good for i in self.items)

    @property
    def changed(self) -> list[Item]:
        return [i for i in self.items if i.status not in ("ok",)]


class Options(BaseModel):
    comfyui_path: Path
    models_dir: Path | None = None
    python: str | None = None
    gpu: comfyui_install.Gpu = "nvidia"
    cuda_version: str | None = None
    steps: tuple[Step, ...] = STEPS
    check_only: bool = False
    rehash: bool = False
    connections: int = 8
    parallel_files: int = 3
    min_chunk_bytes: int = 16 << 20


def extra_model_paths_yaml(models_dir: Path, manifest: Manifest) -> str:
    folders = list(dict.fromkeys([*(m.folder for m in manifest.models), *STANDARD_FOLDERS]))
    lines = ["# Written by comfy-worker provision: models live outside ComfyUI (e.g. on a Vast volume).",
             f"{EXTRA_PATHS_SECTION}:", f"    base_path: {models_dir}"]
    lines += [f"    {f}: {f}/" for f in folders]
    return "\n".join(lines) + "\n"


@contextmanager
def _lock(comfyui_path: Path) -> Iterator[None]:
    key = hashlib.sha256(str(comfyui_path.resolve()).encode()).hexdigest()[:16]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"comfy-worker-provision-{key}.lock"
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another provision of %s is running; waiting for it", comfyui_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


async def provision(manifest: Manifest, opts: Options) -> ProvisionReport:
    loop = asyncio.get_running_loop()
    began = loop.time()
    if opts.check_only:
        report = await _provision(manifest, opts)
    else:
        opts.comfyui_path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(opts.comfyui_path):
            report = await _provision(manifest, opts)
    report.seconds = round(loop.time() - began, 3)
    return report


async def _provision(manifest: Manifest, opts: Options) -> ProvisionReport:
    report = ProvisionReport(check_only=opts.check_only)
    path = opts.comfyui_path
    check = opts.check_only

    if "comfyui" in opts.steps:
        r = await comfyui_install.ensure_comfyui(manifest.comfyui, path, python=opts.python, gpu=opts.gpu,
                                                 cuda_version=opts.cuda_version, check_only=check)
        report.items.append(Item(step="comfyui", name=manifest.comfyui.version, status=r.status, detail=r.detail))
        if r.status not in GOOD and not check:
            raise ProvisionFailed(f"ComfyUI: {r.detail}")

    python = comfyui_install.comfyui_python(path, opts.python)
    if "custom_nodes" in opts.steps and manifest.custom_nodes:
        packs = await custom_nodes.ensure_packs(manifest.custom_nodes, path / "custom_nodes", python,
                                                check_only=check)
        report.items += [Item(step="custom_nodes", name=p.name, status=p.status, detail=p.detail) for p in packs]
        if not check:
            custom_nodes.raise_for(packs)

    if "models" in opts.steps:
        models_dir = opts.models_dir or path / "models"
        dl = downloader.DownloadOptions(connections=opts.connections, parallel_files=opts.parallel_files,
                                        min_chunk_bytes=opts.min_chunk_bytes)
        models = await downloader.ensure_models(manifest.models, models_dir, dl, check_only=check,
                                                rehash=opts.rehash)
        report.items += [Item(step="models", name=m.dest, status=m.status, detail=m.detail) for m in models]
        if opts.models_dir is not None and opts.models_dir.resolve() != (path / "models").resolve():
            report.items.append(_extra_paths(path, models_dir, manifest, check))
    return report


def _extra_paths(path: Path, models_dir: Path, manifest: Manifest, check: bool) -> Item:
    target = path / EXTRA_PATHS_FILE
    wanted = extra_model_paths_yaml(models_dir.resolve(), manifest)
    try:
        current = target.read_text()
    except OSError:
        current = None
    if current == wanted:
        return Item(step="models", name=EXTRA_PATHS_FILE, status="ok", detail=f"points at {models_dir}")
    if current is not None and not current.startswith("# Written by comfy-worker provision"):
        return Item(step="models", name=EXTRA_PATHS_FILE, status="conflict",
                    detail=f"{target} exists and was not written by provision: add a section with "
                           f"base_path: {models_dir} yourself")
    if check:
        return Item(step="models", name=EXTRA_PATHS_FILE, status="missing",
                    detail=f"ComfyUI will not see {models_dir} until it is written")
    if path.exists():
        target.write_text(wanted)
        return Item(step="models", name=EXTRA_PATHS_FILE, status="written", detail=f"points at {models_dir}")
    return Item(step="models", name=EXTRA_PATHS_FILE, status="missing", detail=f"no ComfyUI at {path} to write it in")
