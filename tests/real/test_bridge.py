"""The request contract through the bridge, against a real ComfyUI (the double's behaviours).

Each test says what a caller sees: status, error type and the details that name the
problem, and the outputs themselves (decoded and checked, not just counted).
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from typing import Any

import pytest
from PIL import Image

from tests.real import graphs
from tests.real.launcher import RealComfy

PNG = b"\x89PNG\r\n\x1a\n"


def _images(body: dict[str, Any]) -> list[Image.Image]:
    out = []
    for item in body["output"]:
        raw = base64.b64decode(item["data"])
        assert raw.startswith(PNG) and item["mimetype"] == "image/png" and item["bytes"] == len(raw)
        out.append(Image.open(io.BytesIO(raw)))
    return out


async def test_weightless_graph_returns_every_image_inline(bridge) -> None:
    status, body = await bridge.generate(graphs.weightless(batch=2, width=64, height=48))
    assert status == 200, body
    assert body["status"] == "success" and body["prompt_id"]
    assert [o["node_id"] for o in body["output"]] == ["3", "3"]
    for image in _images(body):
        assert image.size == (64, 48)
        # EmptyImage colour 0x336699, inverted by ImageInvert (float32, truncated on save).
        colours = {c for _, c in image.convert("RGB").getcolors()}
        assert len(colours) == 1
        (got,) = colours
        assert all(abs(g - (255 - c)) <= 1 for g, c in zip(got, (0x33, 0x66, 0x99))), got


async def test_identical_resubmission_still_returns_fresh_files(bridge, real_comfy: RealComfy) -> None:
    """The cache trap: ComfyUI would report the first run's (deleted) files again."""
    graph = graphs.weightless(batch=2)
    first_status, first = await bridge.generate(graph)
    second_status, second = await bridge.generate(graph)
    assert (first_status, second_status) == (200, 200), (first, second)
    assert first["prompt_id"] != second["prompt_id"]
    assert len(second["output"]) == 2
    assert [list(i.getdata()) for i in _images(second)] == [list(i.getdata()) for i in _images(first)]
    # The first run's files were removed once delivered: had ComfyUI served the second
    # run from its cache, it would have named those deleted files.
    runs = (first["prompt_id"][:12], second["prompt_id"][:12])
    assert not [p for p in (real_comfy.base / "output").rglob("*") if p.parent.name in runs]


async def test_value_out_of_range_is_422_with_comfyui_node_errors(bridge) -> None:
    graph = graphs.weightless()
    graph["1"]["inputs"]["width"] = 0
    status, body = await bridge.generate(graph)
    assert status == 422, body
    error = body["error"]
    assert error["type"] == "workflow_rejected" and error["retriable"] is False
    errors = error["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "value_smaller_than_min"
    assert error["node_errors"]["1"]["class_type"] == "EmptyImage"
    assert "width" in error["message"]


async def test_unknown_class_is_422_naming_it(bridge) -> None:
    graph = graphs.weightless()
    graph["2"]["class_type"] = "NoSuchNodeFromAMissingPack"
    status, body = await bridge.generate(graph)
    assert status == 422, body
    assert body["error"]["type"] == "missing_node_classes"
    assert body["error"]["classes"] == ["NoSuchNodeFromAMissingPack"]
    assert "NoSuchNodeFromAMissingPack" in body["error"]["message"]


async def test_missing_checkpoint_is_422_naming_file_and_folder(bridge) -> None:
    status, body = await bridge.generate(graphs.sd15_t2i(ckpt="not_downloaded.safetensors"))
    assert status == 422, body
    error = body["error"]
    assert error["type"] == "missing_models"
    assert error["models"] == [{
        "node_id": "1", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
        "file": "not_downloaded.safetensors", "folder": "checkpoints",
    }]
    assert "not_downloaded.safetensors" in error["message"]


async def test_node_that_raises_is_500_naming_node_and_type(bridge, real_comfy: RealComfy) -> None:
    """LoadImage of a file that is not an image: ComfyUI validates (the file exists), then raises."""
    (real_comfy.base / "input" / "corrupt_input.png").write_bytes(b"this is not a PNG at all")
    status, body = await bridge.generate(graphs.load_invert_save("corrupt_input.png"))
    assert status == 500, body
    error = body["error"]
    assert error["type"] == "execution_error" and error["retriable"] is False
    assert (error["node_id"], error["node_type"]) == ("1", "LoadImage")
    assert error["exception_type"]
    assert "LoadImage" in error["message"]


async def test_uploaded_image_is_used_by_loadimage(bridge, real_comfy: RealComfy) -> None:
    rng = random.Random(7)
    pixels = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(32 * 24)]
    source = Image.new("RGB", (32, 24))
    source.putdata(pixels)
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    status, body = await bridge.generate(
        graphs.load_invert_save("photo.png"),
        images=[{"name": "photo.png", "image": base64.b64encode(buf.getvalue()).decode()}],
    )
    assert status == 200, body
    (image,) = _images(body)
    assert image.size == (32, 24)
    got = list(image.convert("RGB").getdata())
    # ImageInvert in float32, then ComfyUI's uint8 truncation: within one level.
    worst = max(abs(g - (255 - p)) for gp, pp in zip(got, pixels) for g, p in zip(gp, pp))
    assert worst <= 1


async def test_uploaded_image_is_removed_after_the_request(bridge, real_comfy: RealComfy) -> None:
    source = Image.new("RGB", (8, 8), (10, 20, 30))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    status, body = await bridge.generate(
        graphs.load_invert_save("leftover.png"),
        images=[{"name": "leftover.png", "image": base64.b64encode(buf.getvalue()).decode()}],
    )
    assert status == 200, body
    # Removed in the background once the response is made: give it a moment.
    deadline = time.monotonic() + 15

    def left() -> bool:
        try:
            # The file, its run folder and its request's folder all go.
            return bool(list((real_comfy.base / "input").rglob("leftover.png"))
                        or list((real_comfy.base / "input" / "cvw").glob("*")))
        except FileNotFoundError:  # a run folder removed while rglob walked it: still going
            return True

    while left():
        assert time.monotonic() < deadline, "the staged input is still in ComfyUI's input folder"
        await asyncio.sleep(0.1)


async def test_sd15_txt2img_two_steps(bridge, sd15_warm: RealComfy) -> None:
    status, body = await bridge.generate(graphs.sd15_t2i(steps=2, seed=11))
    assert status == 200, body
    (image,) = _images(body)
    assert image.size == (64, 64)
    assert body["timings"]["execution_ms"] > 0


async def test_resend_while_in_flight_joins_and_another_payload_gets_409(bridge, sd15_warm: RealComfy) -> None:
    """Issue 10 item 3 on a real ComfyUI: one GPU run for a request and its resend."""
    from comfy_bridge.app import RUNNER_KEY

    runner = bridge.app[RUNNER_KEY]
    first = asyncio.ensure_future(bridge.generate(graphs.sd15_t2i(steps=4, seed=21), request_id="real-twice"))
    while "real-twice" not in runner.inflight:
        await asyncio.sleep(0.01)
    resend = asyncio.ensure_future(bridge.generate(graphs.sd15_t2i(steps=4, seed=21), request_id="real-twice"))
    other_status, other = await bridge.generate(graphs.sd15_t2i(steps=4, seed=22), request_id="real-twice")
    (s1, b1), (s2, b2) = await asyncio.gather(first, resend)
    assert s1 == s2 == 200 and b1["prompt_id"] == b2["prompt_id"], (b1, b2)
    assert b1["output"][0]["data"] == b2["output"][0]["data"]
    assert b1["output"][0]["filename"].startswith("real-twice_")
    assert other_status == 409 and other["error"]["type"] == "request_id_in_use", other


async def test_res4lyf_sampler_and_scheduler_in_ksampler(bridge, sd15_warm: RealComfy, object_info) -> None:
    if "res_2s" not in object_info["KSampler"]["input"]["required"]["sampler_name"][0]:
        pytest.skip("RES4LYF is not installed in this ComfyUI")
    status, body = await bridge.generate(
        graphs.sd15_t2i(steps=2, seed=12, sampler="res_2s", scheduler="beta57")
    )
    assert status == 200, body
    (image,) = _images(body)
    assert image.size == (64, 64)


async def test_res4lyf_clownshark_sampler(bridge, sd15_warm: RealComfy, object_info) -> None:
    if "ClownsharKSampler_Beta" not in object_info:
        pytest.skip("RES4LYF is not installed in this ComfyUI")
    status, body = await bridge.generate(graphs.sd15_clownshark(steps=2, seed=13))
    assert status == 200, body
    (image,) = _images(body)
    assert image.size == (64, 64)


async def test_deadline_interrupts_the_prompt_and_answers_504(bridge, sd15_warm: RealComfy) -> None:
    status, body = await bridge.generate(graphs.sd15_t2i(steps=10000, seed=14), timeout_s=3)
    assert status == 504, body
    error = body["error"]
    assert error["type"] == "timeout" and error["retriable"] is True
    assert "interrupted" in error["message"]
    prompt_id = body["prompt_id"]
    # ComfyUI stopped it (rather than sampling 10000 steps): its history says interrupted.
    entry = _wait_for_history(sd15_warm, prompt_id, within_s=60)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    # And it is free for the next request.
    status, body = await bridge.generate(graphs.weightless(batch=1))
    assert status == 200, body


def _wait_for_history(comfy: RealComfy, prompt_id: str, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        entry = comfy.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"prompt {prompt_id} never reached /history")
        time.sleep(0.2)
