"""Output conversion with Pillow: which artifacts change, and into what."""

from __future__ import annotations

import io

from PIL import Image

from comfy_bridge.delivery.base import Artifact
from comfy_bridge.delivery.convert import convert_artifact, convert_artifacts
from comfy_bridge.schemas.job import OutputOptions
from tests.io.helpers import png_bytes


def art(name: str, data: bytes, mimetype: str) -> Artifact:
    return Artifact(filename=name, node_id="9", output_type="images", mimetype=mimetype, data=data)


def test_png_to_jpeg_flattens_alpha_on_white():
    src = art("a_00001_.png", png_bytes(8, 8, (0, 0, 0, 0), mode="RGBA"), "image/png")
    out = convert_artifact(src, OutputOptions(format="jpeg", quality=95))
    assert out.filename == "a_00001_.jpg" and out.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert min(img.getpixel((4, 4))) > 245  # transparent became white, not black
    assert (out.node_id, out.output_type) == ("9", "images")


def test_png_to_webp_keeps_alpha_and_honours_quality():
    src = art("b.png", png_bytes(64, 64, (10, 120, 240, 128), mode="RGBA"), "image/png")
    low = convert_artifact(src, OutputOptions(format="webp", quality=10))
    with Image.open(io.BytesIO(low.data)) as img:
        assert img.format == "WEBP" and img.mode == "RGBA"
    assert low.filename == "b.webp" and low.mimetype == "image/webp"


def test_left_alone_when_not_applicable():
    png = art("c.png", png_bytes(), "image/png")
    assert convert_artifact(png, OutputOptions()) is png  # no format asked
    assert convert_artifact(png, OutputOptions(format="png")) is png  # already PNG
    video = art("v.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    assert convert_artifact(video, OutputOptions(format="webp")) is video
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    animated = art("anim.webp", buf.getvalue(), "image/webp")
    assert convert_artifact(animated, OutputOptions(format="png")) is animated
    broken = art("broken.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")
    assert convert_artifact(broken, OutputOptions(format="jpeg")) is broken  # delivered as made


async def test_convert_artifacts_in_a_thread_and_path_sources(tmp_path):
    path = tmp_path / "d.png"
    path.write_bytes(png_bytes(16, 16))
    on_disk = Artifact(filename="d.png", node_id="9", output_type="images", mimetype="image/png", path=path)
    [out] = await convert_artifacts([on_disk], OutputOptions(format="jpeg"))
    assert out.path is None and out.data[:2] == b"\xff\xd8" and path.exists()
