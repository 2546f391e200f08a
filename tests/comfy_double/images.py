"""Lazy images for the double: specs that render to Pillow images only when saved.

Graph values stay cheap (a 4096x4096x4 EmptyImage costs nothing until a save node
renders it), and encoded PNGs are memoised by spec so a benchmark saving the same
1024x1024 noise image many times pays the zlib cost once.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image, ImageOps


@dataclass(frozen=True)
class ImageSpec:
    """One image of a batch: size plus a recipe (a hashable key and a renderer)."""

    width: int
    height: int
    key: tuple
    render: Callable[[], Image.Image] = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class ImageBatch:
    """What flows on an IMAGE link."""

    frames: tuple[ImageSpec, ...]

    def __len__(self) -> int:
        return len(self.frames)

    def __str__(self) -> str:  # what ComfyUI's format_value would show for a tensor
        f = self.frames[0] if self.frames else None
        return f"tensor(shape=[{len(self.frames)}, {f.height if f else 0}, {f.width if f else 0}, 3])"


def solid(width: int, height: int, color: int) -> ImageSpec:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return ImageSpec(width, height, ("solid", width, height, color), lambda: Image.new("RGB", (width, height), rgb))


# Noise quantised so that a 1024x1024 PNG weighs about 1.8 MB, like real SD/SDXL outputs
# (pure random bytes would give 3.1 MB, a flat colour a few KB).
_MASK_FINE = bytes(i & 0xF8 for i in range(256))
_MASK_COARSE = bytes(i & 0xF0 for i in range(256))


def _render_noise(width: int, height: int, seed: int) -> Image.Image:
    raw = random.Random(seed).randbytes(width * height * 3)
    split = (len(raw) * 3 // 5) // 3 * 3
    data = raw[:split].translate(_MASK_FINE) + raw[split:].translate(_MASK_COARSE)
    return Image.frombytes("RGB", (width, height), data)


def noise(width: int, height: int, seed: int) -> ImageSpec:
    return ImageSpec(width, height, ("noise", width, height, seed), lambda: _render_noise(width, height, seed))


def inverted(spec: ImageSpec) -> ImageSpec:
    return ImageSpec(spec.width, spec.height, ("invert", spec.key), lambda: ImageOps.invert(spec.render().convert("RGB")))


def tagged(spec: ImageSpec, tag: str) -> ImageSpec:
    """A pass-through filter (blur, sharpen): same pixels, distinct identity."""
    return ImageSpec(spec.width, spec.height, (tag, spec.key), spec.render)


def from_pil(img: Image.Image, key: tuple) -> ImageSpec:
    frozen = img.copy()
    return ImageSpec(frozen.width, frozen.height, key, lambda: frozen.copy())


@functools.lru_cache(maxsize=16)
def _png_core(spec: ImageSpec, compress_level: int) -> bytes:
    buf = io.BytesIO()
    spec.render().save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(spec: ImageSpec, compress_level: int = 4, text: dict[str, str] | None = None) -> bytes:
    """Encode (memoised) and splice tEXt chunks after IHDR, as PngInfo would place them."""
    core = _png_core(spec, compress_level)
    if not text:
        return core
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR header, IHDR data, CRC
    chunks = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace")) for k, v in text.items())
    return core[:ihdr_end] + chunks + core[ihdr_end:]


def encode(spec: ImageSpec, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img = spec.render()
    if fmt.upper() == "JPEG":
        img = img.convert("RGB")
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
