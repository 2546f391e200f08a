"""Which model family a graph samples with, and what one of its steps costs.

Why: load units must predict time across models, not only across step counts and
sizes. Per latent megapixel and step, an SD1.5 UNet at 512x512 costs more than SDXL at
1024x1024 relative to its pixels (0.61 s against 1.34-1.43 s for a 4x smaller latent on
an H100, ../shared/FACTS.md), and a 12B DiT costs several times either. The factor is
read from the checkpoint the graph loads: the tensor names in its safetensors header
(the keys ComfyUI's own model detection looks at), else hints in its name, else its
size. SDXL is the reference (1.0), so the units of an SDXL graph are unchanged.

Factors, per latent-megapixel step relative to SDXL 1024x1024 on an H100:
- sdxl 1.0: 20 euler steps, 1.34-1.43 s (FACTS.md), units 21.
- sd15 1.65: SD1.5 512x512, 20 euler steps, 0.61 s: (0.61 / 1.385 x 21 - 1) / 5.
- sd2 1.65: the same UNet size as SD1.5 (an estimate, not measured here).
- sd3 1.3, flux 6.0: estimates from parameter counts (2.5B / 12B against SDXL's 2.6B,
  a transformer over all latent tokens); measure with bench/gpu_check.sh.
- unknown 1.0.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from pathlib import Path
from typing import Iterable

FACTORS: dict[str, float] = {"sdxl": 1.0, "sd15": 1.65, "sd2": 1.65, "sd3": 1.3, "flux": 6.0, "unknown": 1.0}

# Loader nodes and the input naming the file, with the models/ folder it is read from.
LOADERS: dict[str, tuple[str, str]] = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "CheckpointLoader": ("ckpt_name", "checkpoints"),
    "ImageOnlyCheckpointLoader": ("ckpt_name", "checkpoints"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "UnetLoaderGGUF": ("unet_name", "unet"),
}

# Tensor-name prefixes, most specific first (state dicts of whole checkpoints or UNets).
_KEY_HINTS: tuple[tuple[str, str], ...] = (
    ("double_blocks.", "flux"),
    ("joint_blocks.", "sd3"),
    ("conditioner.embedders.1.", "sdxl"),
    ("label_emb.", "sdxl"),  # SDXL's UNet has a class (size/crop) embedding; SD1.5/2 have none
    ("cond_stage_model.model.transformer.", "sd2"),
    ("cond_stage_model.transformer.", "sd15"),
    ("input_blocks.", "sd15"),
)
_NAME_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"flux", re.I), "flux"),
    (re.compile(r"sd3|sd_3|stable-diffusion-3", re.I), "sd3"),
    (re.compile(r"xl|pony|illustrious", re.I), "sdxl"),
    (re.compile(r"sd-?1\.?5|v1-5|sd15|1\.5", re.I), "sd15"),
    (re.compile(r"sd-?2|v2-1|768-v", re.I), "sd2"),
)
_GB = 1024**3
_MAX_HEADER = 64 * 1024 * 1024


def family_from_keys(keys: Iterable[str]) -> str:
    """The family whose tensor names these are ("unknown" when none match)."""
    found: set[str] = set()
    for key in keys:
        key = key.removeprefix("model.diffusion_model.")
        for prefix, family in _KEY_HINTS:
            if key.startswith(prefix):
                found.add(family)
    for _, family in _KEY_HINTS:  # the order above decides: SDXL also has input_blocks
        if family in found:
            return family
    return "unknown"


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a safetensors header (reads the header only), [] when not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return []
            (size,) = struct.unpack("<Q", raw)
            if not 2 <= size <= _MAX_HEADER:
                return []
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return []
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


def family_from_name(name: str) -> str:
    stem = Path(name).name
    for pattern, family in _NAME_HINTS:
        if pattern.search(stem):
            return family
    return "unknown"


def family_from_size(size: int) -> str:
    """Whole checkpoints: SD1.5 2-4.3 GB, SDXL 6.5-7 GB (fp16), Flux 12-24 GB."""
    if size <= 0:
        return "unknown"
    return "sd15" if size < 4.5 * _GB else "sdxl" if size < 11 * _GB else "flux"


class ModelFamilies:
    """Family of a model file named in a graph, cached by (path, size, mtime).

    `models_dirs`: folders holding checkpoints/, diffusion_models/... (ComfyUI's models/
    and a volume's); without any, only the name is read.
    """

    def __init__(self, models_dirs: Iterable[Path] = ()) -> None:
        self.models_dirs = [Path(d) for d in models_dirs]
        self._cache: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def family(self, folder: str, name: str) -> str:
        path = self._find(folder, name)
        if path is None:
            return family_from_name(name)
        try:
            st = path.stat()
        except OSError:
            return family_from_name(name)
        key = (str(path), st.st_size, int(st.st_mtime))
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        family = family_from_keys(safetensors_keys(path)) if path.suffix == ".safetensors" else "unknown"
        if family == "unknown":
            family = family_from_name(name)
        if family == "unknown" and folder == "checkpoints":
            family = family_from_size(st.st_size)
        with self._lock:
            self._cache[key] = family
        return family

    def factor(self, folder: str, name: str) -> float:
        return FACTORS.get(self.family(folder, name), 1.0)

    def warm(self) -> int:
        """Read every checkpoint's header now (at start, off the event loop): how many."""
        n = 0
        for folder, _ in {v[1]: None for v in LOADERS.values()}.items():
            for base in self.models_dirs:
                root = base / folder
                if not root.is_dir():
                    continue
                for dirpath, _, files in os.walk(root):
                    for f in files:
                        rel = os.path.relpath(os.path.join(dirpath, f), root)
                        self.family(folder, rel)
                        n += 1
        return n

    def _find(self, folder: str, name: str) -> Path | None:
        if ".." in Path(name).parts:
            return None
        for base in self.models_dirs:
            for sub in (folder, "unet") if folder == "diffusion_models" else (folder,):
                p = base / sub / name
                if p.is_file():
                    return p
        return None
