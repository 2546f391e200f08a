"""The bridge's own graph checks refuse only what is known wrong, and leave ComfyUI's
validation to decide the rest (comfy_bridge/comfyui/graph.py): a constant for a custom
widget type reaches ComfyUI; a constant where ComfyUI's own data types go (LATENT, IMAGE...)
is a 422 naming the input. A save node whose filename_prefix comes from a link still
writes fresh files for a repeated graph (the cache trap)."""

from __future__ import annotations

import io
import base64
from typing import Any

from PIL import Image

from tests.comfy_double import ComfyDouble
from tests.support import save_graph

# A pack's node whose input is a widget of the pack's own type (e.g. a colour picker).
_PACK_NODE = {"PackTintPreview": {
    "input": {"required": {"image": ["IMAGE", {}], "tint": ["PACK_COLOR", {}]}},
    "output": [], "output_node": True, "category": "pack",
}}


def _webcam_graph(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "WebcamCapture",
              "inputs": {"image": image, "width": 0, "height": 0, "capture_on_queue": True}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cam"}},
    }


async def test_core_custom_widget_constant_reaches_comfyui(make_bridge, comfy_double: ComfyDouble):
    # WebcamCapture's `image` is of type WEBCAM and takes a file name: ComfyUI accepts it.
    Image.new("RGB", (6, 4), (9, 8, 7)).save(comfy_double.input_dir / "cam.png")
    bridge = await make_bridge(comfy_double.url, comfy_double.root)
    status, body = await bridge.generate(_webcam_graph("cam.png"))
    assert status == 200, body
    [out] = body["output"]
    assert out["bytes"] > 0


async def test_pack_widget_constant_reaches_comfyui(make_bridge, make_comfy_double):
    double = await make_comfy_double(object_info_extra=_PACK_NODE)
    bridge = await make_bridge(double.url, double.root)
    graph = save_graph()
    graph["3"] = {"class_type": "PackTintPreview", "inputs": {"image": ["1", 0], "tint": "#ff8800"}}
    status, body = await bridge.generate(graph)
    assert status == 200, body
    assert double.requests_to("/prompt", "POST")  # ComfyUI saw it and ran it


async def test_constant_into_a_core_data_type_is_422(make_bridge, comfy_double: ComfyDouble):
    bridge = await make_bridge(comfy_double.url, comfy_double.root)
    graph = save_graph()
    graph["2"]["inputs"]["images"] = None  # an IMAGE only a node's output carries
    status, body = await bridge.generate(graph)
    assert status == 422, body
    err = body["error"]
    assert err["node_id"] == "2" and err["input_name"] == "images" and "IMAGE" in err["message"]
    assert not comfy_double.requests_to("/prompt", "POST")  # refused before any GPU work


async def test_linked_filename_prefix_gives_fresh_files(make_bridge, comfy_double: ComfyDouble):
    bridge = await make_bridge(comfy_double.url, comfy_double.root)
    graph = save_graph(color=0x123456)
    graph["3"] = {"class_type": "PrimitiveString", "inputs": {"value": "linked"}}
    graph["2"]["inputs"]["filename_prefix"] = ["3", 0]
    first = await bridge.generate(graph, request_id="same")
    executed = comfy_double.nodes_executed
    second = await bridge.generate(graph, request_id="same")
    assert first[0] == second[0] == 200, (first, second)
    assert comfy_double.nodes_executed > executed  # the save node ran again, not served from cache
    names = [body["output"][0]["filename"] for _, body in (first, second)]
    assert names[0] != names[1] and all(n.startswith("same_linked") for n in names)  # inline: <request_id>_<file>
    for _, body in (first, second):
        img = Image.open(io.BytesIO(base64.b64decode(body["output"][0]["data"])))
        assert img.convert("RGB").getpixel((0, 0)) == (0x12, 0x34, 0x56)
