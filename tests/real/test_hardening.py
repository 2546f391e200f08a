"""Issue 10's hardening against a real ComfyUI: graphs the bridge must not refuse, the
cache trap with a linked filename_prefix, and the watchdog leaving silent work running."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from comfy_bridge.app import RUNNER_KEY
from tests.real import graphs
from tests.real.launcher import RealComfy


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["data"])))


async def test_constant_for_a_custom_widget_type_runs(bridge) -> None:
    # WebcamCapture's `image` input is of type WEBCAM and takes a file name, as the UI sends it.
    graph = {
        "1": {"class_type": "WebcamCapture",
              "inputs": {"image": "cam.png", "width": 0, "height": 0, "capture_on_queue": True}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "real/cam"}},
    }
    status, body = await bridge.generate(graph, images=[{"name": "cam.png", "image": _png((12, 10), (200, 40, 9))}])
    assert status == 200, body
    (item,) = body["output"]
    image = _image(item)
    assert image.size == (12, 10) and image.convert("RGB").getpixel((3, 3)) == (200, 40, 9)


async def test_linked_filename_prefix_still_gives_fresh_files(bridge, real_comfy: RealComfy) -> None:
    graph = graphs.weightless(batch=1)
    graph["9"] = {"class_type": "PrimitiveString", "inputs": {"value": "linkedprefix"}}
    graph["3"]["inputs"]["filename_prefix"] = ["9", 0]
    first_status, first = await bridge.generate(graph)
    second_status, second = await bridge.generate(graph)
    assert (first_status, second_status) == (200, 200), (first, second)
    names = [body["output"][0]["filename"] for body in (first, second)]
    # Served from ComfyUI's cache, the second run would name the first run's file again.
    # Inline names carry the request_id before ComfyUI's own name (README: the request).
    assert names[0] != names[1] and all(
        n == f"{body['id']}_{n.split('_', 1)[1]}" and n.split("_", 1)[1].startswith("linkedprefix")
        for n, body in zip(names, (first, second))
    ), names
    assert list(_image(second["output"][0]).getdata()) == list(_image(first["output"][0]).getdata())


async def test_watchdog_leaves_silent_cpu_work_running(make_bridge, sd15_warm: RealComfy) -> None:
    # On a CPU every sampler step and the VAE decode run far longer than 50 ms without an event.
    bridge = await make_bridge(sd15_warm, watchdog_silence_s=0.05)
    status, body = await bridge.generate(graphs.sd15_t2i(steps=2, seed=4242))
    assert status == 200, body
    watchdog = bridge.app[RUNNER_KEY].watchdog
    assert watchdog.trips == 0 and watchdog.slow >= 1
