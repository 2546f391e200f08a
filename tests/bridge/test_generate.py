"""POST /generate/sync against the ComfyUI double: outputs, batches, caching, concurrency."""

from __future__ import annotations

import asyncio
import base64
import io

from PIL import Image

from tests.support import PNG_MAGIC, save_graph


def _png(entry: dict) -> Image.Image:
    raw = base64.b64decode(entry["data"])
    assert raw.startswith(PNG_MAGIC)
    assert len(raw) == entry["bytes"]
    return Image.open(io.BytesIO(raw))


async def test_weightless_graph_returns_png_inline(bridge, double):
    status, body = await bridge.generate(save_graph(), request_id="req-1")
    assert status == 200, body
    assert body["id"] == "req-1" and body["status"] == "success" and body["prompt_id"]
    [out] = body["output"]
    assert out["node_id"] == "2" and out["output_type"] == "images" and out["mimetype"] == "image/png"
    assert _png(out).size == (64, 48)
    assert set(body["timings"]) == {"queued_ms", "inputs_ms", "execution_ms", "outputs_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["execution_ms"]
    # Delivered files do not pile up in ComfyUI's output folder (removed in the background).
    await bridge.runner.drain()
    assert not [p for p in double.output_dir.rglob("*") if p.is_file()]
    assert [p.name for p in double.output_dir.iterdir()] == ["cvw"]
    assert not list((double.output_dir / "cvw").iterdir())


async def test_batch_outputs_all_returned(bridge):
    status, body = await bridge.generate(save_graph(batch=3))
    assert status == 200, body
    assert len(body["output"]) == 3
    assert len({o["filename"] for o in body["output"]}) == 3
    for out in body["output"]:
        _png(out)


async def test_repeated_identical_request_gets_fresh_files(bridge, double):
    """The cache trap: an identical graph would be served from cache with deleted files."""
    first = await bridge.generate(save_graph(), request_id="same")
    executed = double.nodes_executed
    second = await bridge.generate(save_graph(), request_id="same")
    assert first[0] == second[0] == 200
    assert first[1]["prompt_id"] != second[1]["prompt_id"]
    _png(second[1]["output"][0])
    assert double.nodes_executed > executed  # SaveImage really ran again


async def test_concurrent_requests_do_not_collide(bridge):
    colors = [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00]
    results = await asyncio.gather(
        *(bridge.generate(save_graph(color=c, prefix="same/prefix"), request_id=f"r{i}")
          for i, c in enumerate(colors))
    )
    for (status, body), color in zip(results, colors):
        assert status == 200, body
        [out] = body["output"]
        rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
        assert _png(out).convert("RGB").getpixel((0, 0)) == rgb


async def test_non_image_outputs_with_mimetypes(bridge):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0}},
        "2": {"class_type": "VHS_VideoCombine", "inputs": {
            "images": ["1", 0], "frame_rate": 8, "loop_count": 0, "filename_prefix": "anim",
            "format": "image/gif", "pingpong": False, "save_output": True}},
        "3": {"class_type": "DoubleSineAudio", "inputs": {"seconds": 0.1, "frequency": 440.0}},
        "4": {"class_type": "SaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/tone"}},
    }
    status, body = await bridge.generate(graph)
    assert status == 200, body
    by_type = {o["output_type"]: o for o in body["output"]}
    assert by_type["gifs"]["mimetype"] == "image/gif"
    assert base64.b64decode(by_type["gifs"]["data"]).startswith(b"GIF8")
    assert by_type["audio"]["mimetype"] == "audio/wav"
    assert base64.b64decode(by_type["audio"]["data"]).startswith(b"RIFF")


async def test_outputs_fetched_through_view_without_comfyui_path(double, make_bridge):
    bridge = await make_bridge(double.url)  # no comfyui_path: /view
    status, body = await bridge.generate(save_graph(batch=2))
    assert status == 200, body
    assert len(body["output"]) == 2
    assert len(double.requests_to("/view")) == 2


async def test_input_image_is_uploaded_and_used(bridge):
    buf = io.BytesIO()
    Image.new("RGB", (5, 7), (1, 2, 3)).save(buf, "PNG")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}},
    }
    status, body = await bridge.generate(
        graph, images=[{"name": "photo.png", "image": base64.b64encode(buf.getvalue()).decode()}]
    )
    assert status == 200, body
    assert _png(body["output"][0]).size == (5, 7)


async def test_previews_only_when_nothing_else(bridge):
    graph = save_graph()
    graph["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    status, body = await bridge.generate(graph)
    assert status == 200 and len(body["output"]) == 1 and body["output"][0]["node_id"] == "2"

    preview_only = {"1": graph["1"], "3": graph["3"]}
    status, body = await bridge.generate(preview_only)
    assert status == 200 and len(body["output"]) == 1 and body["output"][0]["node_id"] == "3"


async def test_save_image_websocket_frames_become_outputs(bridge):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    status, body = await bridge.generate(graph)
    assert status == 200, body
    [out] = body["output"]
    assert out["node_id"] == "2" and out["mimetype"] == "image/png"
    assert _png(out).size == (8, 8)


async def test_workload_fn_is_reported(double, make_bridge):
    bridge = await make_bridge(double.url, double.root, workload_fn=lambda g: float(len(g)))
    status, body = await bridge.generate(save_graph())
    assert status == 200 and body["workload"] == 2.0


async def test_webhook_gets_the_response(double, make_bridge):
    from aiohttp import web

    got: asyncio.Queue = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        bridge = await make_bridge(double.url, double.root, allow_private_urls=True)
        status, body = await bridge.generate(save_graph(), request_id="hooked",
                                             webhook={"url": f"http://127.0.0.1:{port}/hook"})
        assert status == 200, body
        delivered = await asyncio.wait_for(got.get(), 10)
        assert delivered["id"] == "hooked" and delivered["status"] == "success"
        assert delivered["output"][0]["data"] == body["output"][0]["data"]
    finally:
        await runner.cleanup()


async def test_history_race_is_not_lost(make_comfy_double, make_bridge):
    """/history is still empty when execution_success arrives; the outputs come from the
    `executed` events and the request ends on `executing: null`, never asking /history."""
    double = await make_comfy_double(history_lag_s=0.3)
    bridge = await make_bridge(double.url, double.root)
    status, body = await bridge.generate(save_graph(batch=2))
    assert status == 200, body
    assert len(body["output"]) == 2
    assert double.requests_to(f"/history/{body['prompt_id']}", "GET") == []
