"""Optional re-encoding of image outputs (`output: {format, quality}`) with Pillow.

Backends often want WebP or JPEG instead of ComfyUI's PNGs: a 1024x1024 PNG of 1.8 MB
is about 0.2 MB as WebP q90, which is cheaper to store, upload and return inline. Only
still images are converted; animations, videos, audio and other files pass through as
made, and so does an image already in the asked format.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import PurePath

from PIL import Image

from comfy_bridge import logs
from comfy_bridge.delivery.base import Artifact
from comfy_bridge.schemas.job import OutputOptions

log = logs.get(__name__)

_PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_EXTENSION = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
_MIMETYPE = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
# Formats Pillow reads that are worth converting; anything else is left alone.
_CONVERTIBLE = {"PNG", "JPEG", "WEBP", "BMP", "TIFF"}


def _wants(artifact: Artifact, options: OutputOptions | None) -> bool:
    return bool(options and options.format) and artifact.mimetype.startswith("image/")


def convert_artifact(artifact: Artifact, options: OutputOptions | None) -> Artifact:
    """Return the artifact re-encoded as `options.format`, or unchanged when not applicable.

    CPU-bound: call it from a thread (or use `convert_artifacts`). The result holds its
    bytes in memory (`data`) and a renamed filename; the original file is not touched.
    """
    if not _wants(artifact, options):
        return artifact
    assert options is not None
    try:
        return _convert(artifact, options)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # A file Pillow cannot read is still an output: deliver it as made.
        log.warning("not converting %s: %s", artifact.filename, exc)
        return artifact


def _convert(artifact: Artifact, options: OutputOptions) -> Artifact:
    assert options.format is not None
    target = options.format
    with Image.open(io.BytesIO(artifact.read_bytes())) as img:
        if img.format not in _CONVERTIBLE or getattr(img, "is_animated", False):
            return artifact
        if img.format == _PIL_FORMAT[target]:
            return artifact
        img.load()
        out = io.BytesIO()
        if target == "jpeg":
            frame = img if img.mode in ("RGB", "L") else _flatten(img)
            frame.save(out, "JPEG", quality=options.quality, optimize=False)
        elif target == "webp":
            frame = img if img.mode in ("RGB", "RGBA", "L") else img.convert("RGBA")
            frame.save(out, "WEBP", quality=options.quality, method=4)
        else:
            img.save(out, "PNG", compress_level=4)
    stem = PurePath(artifact.filename).stem
    return replace(
        artifact,
        filename=stem + _EXTENSION[target],
        mimetype=_MIMETYPE[target],
        data=out.getvalue(),
        path=None,
    )


def _flatten(img: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white rather than let transparent pixels go black."""
    rgba = img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


async def convert_artifacts(
    artifacts: list[Artifact], options: OutputOptions | None
) -> list[Artifact]:
    """Convert every image artifact off the event loop; a no-op without `options.format`."""
    if not options or not options.format or not any(_wants(a, options) for a in artifacts):
        return artifacts
    return await asyncio.to_thread(lambda: [convert_artifact(a, options) for a in artifacts])
