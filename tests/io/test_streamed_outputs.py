"""Big inline outputs stream from disk into the body (issue 10 item 6): the base64 is made
chunk by chunk as it is written, never held whole, and stays readable after ComfyUI's
output folder is emptied."""

from __future__ import annotations

import base64
import hashlib
import io
import tracemalloc

from PIL import Image

from comfy_bridge.delivery import inline
from comfy_bridge.delivery.inline import InlineDestination, render, render_parts
from comfy_bridge.delivery.stream import CHUNK_BYTES, Base64File
from comfy_bridge.schemas.job import GenerateResponse, JobInput, Timings
from tests.io.helpers import file_artifact, random_bytes

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


async def test_a_big_output_streams_in_chunks_without_being_held(make_settings, tmp_path):
    data = random_bytes(inline.STREAM_ABOVE_BYTES * 2 + 7)
    art = file_artifact(tmp_path / "out", "clip_00001_.mp4", data, output_type="videos")
    request = JobInput.model_validate({"request_id": "big-1", "workflow_json": GRAPH})
    destination = InlineDestination(make_settings(max_inline_bytes=len(data) * 2))

    tracemalloc.start()
    try:
        [out] = await destination.deliver(request, [art])
        art.path.unlink()  # ComfyUI's folder emptied before the body is written
        response = GenerateResponse(id="big-1", prompt_id="p", output=[out], timings=Timings())
        parts = render_parts(response)
        streamed = [p for p in parts if isinstance(p, Base64File)]
        digest, length, decoded = hashlib.sha256(), 0, hashlib.sha256()
        for part in parts:
            if isinstance(part, bytes):
                length += len(part)
                continue
            async for chunk in part.chunks():
                length += len(chunk)
                decoded.update(base64.b64decode(chunk))
                digest.update(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(streamed) == 1 and out.data is None and out.filename == "big-1_clip_00001_.mp4"
    assert length == sum(len(p) for p in parts)  # the Content-Length the writer announces
    assert decoded.digest() == hashlib.sha256(data).digest()
    # The whole base64 would be 1.33 x the file (43 MiB); a few chunks at a time is the bound.
    assert peak < 4 * CHUNK_BYTES, peak
    body = render(response)  # the one-piece form decodes to the same file
    assert body.count(base64.b64encode(data[:3000])) == 1


async def test_small_outputs_are_still_encoded_at_once(make_settings, tmp_path):
    art = file_artifact(tmp_path / "out", "a.png", b"\x89PNG" + random_bytes(5000))
    request = JobInput.model_validate({"request_id": "small", "workflow_json": GRAPH})
    [out] = await InlineDestination(make_settings()).deliver(request, [art])
    assert out.data is not None and base64.b64decode(out.data) == art.path.read_bytes()


async def test_streamed_outputs_reach_callers_of_both_routes_intact(comfy_double, make_bridge, monkeypatch):
    """Through HTTP: /generate/sync's body and /generate/stream's result event carry the
    streamed base64 (any output streams when the threshold is lowered)."""
    from tests.stream.conftest import post_stream
    from tests.support import save_graph

    monkeypatch.setattr(inline, "STREAM_ABOVE_BYTES", 10)
    bridge = await make_bridge(comfy_double.url, comfy_double.root)
    status, body = await bridge.generate(save_graph(width=300, height=200, color=0x336699), request_id="st-big")
    assert status == 200, body
    [out] = body["output"]
    raw = base64.b64decode(out["data"])
    assert len(raw) == out["bytes"] and raw.startswith(b"\x89PNG")
    streamed = await post_stream(bridge, {"workflow_json": save_graph(width=300, height=200, color=0x336699)})
    [again] = streamed.final.response.output
    pixels = [Image.open(io.BytesIO(b)).convert("RGB") for b in (raw, base64.b64decode(again.data))]
    assert [p.size for p in pixels] == [(300, 200)] * 2
    assert [p.getpixel((5, 5)) for p in pixels] == [(0x33, 0x66, 0x99)] * 2
