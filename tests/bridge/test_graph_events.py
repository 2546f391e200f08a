"""Pure parts of the bridge: graph checks and rewrites, event parsing, body rendering."""

from __future__ import annotations

import json
import struct

import pybase64
import pytest

from comfy_bridge.comfyui import events as ev
from comfy_bridge.comfyui import graph as graphs
from comfy_bridge.delivery.inline import render
from comfy_bridge.errors import (
    InvalidWorkflow,
    MissingModels,
    MissingNodeClasses,
    WorkflowRejected,
)
from comfy_bridge.schemas.job import GenerateResponse, OutputFile, Timings


def _graph() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a/b/../pic"}},
    }


@pytest.mark.parametrize(
    "graph, needle",
    [
        ({}, "non-empty object"),
        ({"1": "x"}, "node '1' must be an object"),
        ({"1": {"inputs": {}}}, "node '1' has no class_type"),
        ({"1": {"class_type": "X", "inputs": []}}, "inputs must be an object"),
        ({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}, "links to node '9'"),
    ],
)
def test_structure_errors_name_the_node(graph, needle):
    with pytest.raises(InvalidWorkflow) as info:
        graphs.validate_structure(graph)
    assert needle in info.value.message
    assert info.value.status == 422


def test_prepare_rewrites_prefix_and_staged_inputs_without_touching_original():
    g = _graph()
    out = graphs.prepare(g, "cvw/req/abc", {"in.png": "cvw/req/in.png"})
    assert out["3"]["inputs"]["filename_prefix"] == "cvw/req/abc/pic"
    assert out["2"]["inputs"]["image"] == "cvw/req/in.png"
    assert g["3"]["inputs"]["filename_prefix"] == "a/b/../pic"
    assert graphs.output_dir("r1", "01234567-89ab-cdef") == "cvw/r1-0123456789ab"


def test_rejection_maps_unknown_class():
    body = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode_res4lyf does not exist.",
                      "details": "Node ID '#2'", "extra_info": {}}, "node_errors": {}}
    err = graphs.rejection(body)
    assert isinstance(err, MissingNodeClasses)
    assert err.details["classes"] == ["NoSuchNode_res4lyf"]


def test_rejection_maps_missing_models_with_folder_but_not_samplers():
    def miss(name, value):
        return {"type": "value_not_in_list", "message": "Value not in list",
                "details": f"{name}: '{value}' not in []",
                "extra_info": {"input_name": name, "input_config": [[]], "received_value": value}}
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
            "node_errors": {
                "4": {"errors": [miss("ckpt_name", "sdxl.safetensors")], "class_type": "CheckpointLoaderSimple",
                      "dependent_outputs": ["9"]},
                "5": {"errors": [miss("lora_name", "x.safetensors")], "class_type": "LoraLoader", "dependent_outputs": []},
            }}
    err = graphs.rejection(body)
    assert isinstance(err, MissingModels)
    assert "sdxl.safetensors" in err.message and "models/checkpoints/" in err.message
    assert {m["folder"] for m in err.details["models"]} == {"checkpoints", "loras"}
    assert err.details["node_errors"] == body["node_errors"]

    sampler = {"error": {"message": "Prompt outputs failed validation"},
               "node_errors": {"3": {"errors": [miss("sampler_name", "res_2s")], "class_type": "KSampler"}}}
    err = graphs.rejection(sampler)
    assert type(err) is WorkflowRejected
    assert "node 3 (KSampler)" in err.message


def test_parse_binary_frames():
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 10
    frame = ev.parse_binary(struct.pack(">II", 1, 2) + png)
    assert frame is not None and frame.mimetype == "image/png" and frame.payload == png
    meta = json.dumps({"image_type": "image/jpeg", "node_id": "7", "prompt_id": "p"}).encode()
    frame = ev.parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"\xff\xd8")
    assert frame is not None and frame.prompt_id == "p" and frame.node_id == "7" and frame.payload == b"\xff\xd8"
    text = ev.parse_binary(struct.pack(">II", 3, 1) + b"5hello")
    assert text is not None and text.node_id == "5" and text.payload == b"hello"
    assert ev.parse_binary(b"\x00") is None
    assert ev.parse_binary(struct.pack(">I", 99)) is not None  # unknown kinds do not raise
    assert ev.parse_text("not json") is None and ev.parse_text("[1]") is None


def test_render_splices_base64_exactly():
    blob = pybase64.b64encode(bytes(range(256)) * 100).decode()
    resp = GenerateResponse(
        id="r", prompt_id="p", timings=Timings(),
        output=[OutputFile(filename=f"f{i}.png", node_id="3", output_type="images", mimetype="image/png",
                           bytes=25600, data=blob[i:]) for i in range(12)]
        + [OutputFile(filename="small", node_id="3", output_type="text", mimetype="text/plain", bytes=1, data="QQ==")],
    )
    assert json.loads(render(resp)) == json.loads(resp.model_dump_json())
