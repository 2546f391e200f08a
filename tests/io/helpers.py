"""Small builders shared by the IO tests."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from comfy_bridge.delivery.base import Artifact, guess_mimetype


def png_bytes(width: int = 32, height: int = 24, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def file_artifact(folder: Path, name: str, data: bytes, *, node_id: str = "9", output_type: str = "images") -> Artifact:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return Artifact(filename=name, node_id=node_id, output_type=output_type, mimetype=guess_mimetype(name), path=path)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
