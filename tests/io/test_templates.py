"""Named workflow templates: the shipped ones, expansion, validation errors, the routes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from comfy_bridge.errors import BadRequest, UnknownTemplate
from comfy_bridge.templates import TemplateStore
from comfy_bridge.templates.api_router import add_routes

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

# Input names of the real node classes (ComfyUI v0.3.64 nodes.py, RES4LYF 7750bf7).
NODE_INPUTS = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "KSampler": {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                 "latent_image", "denoise"},
    "VAEDecode": {"samples", "vae"},
    "SaveImage": {"images", "filename_prefix"},
    "ClownsharKSampler_Beta": {"eta", "sampler_name", "scheduler", "steps", "steps_to_run", "denoise", "cfg",
                               "seed", "sampler_mode", "bongmath", "model", "positive", "negative",
                               "latent_image"},
}


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore(WORKFLOWS)


@pytest.mark.parametrize("name", ["sdxl_t2i", "sdxl_res4lyf_t2i"])
def test_shipped_templates_load_with_real_node_inputs(store, name):
    assert not store.errors, store.errors
    template = store.get(name)
    for node_id, node in template.graph.items():
        expected = NODE_INPUTS[node["class_type"]]
        assert set(node["inputs"]) == expected, (node_id, node["class_type"])
        for value in node["inputs"].values():
            if isinstance(value, list):  # links point at existing nodes
                assert value[0] in template.graph
    params = set(template.spec.parameters)
    assert {"prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "sampler_name",
            "scheduler", "batch_size", "checkpoint"} <= params


def test_res4lyf_template_samples_with_res_2s_beta57(store):
    graph = store.expand("sdxl_res4lyf_t2i", {"prompt": "a fox", "seed": 3})
    [sampler] = [n for n in graph.values() if n["class_type"] == "ClownsharKSampler_Beta"]
    assert sampler["inputs"]["sampler_name"] == "res_2s" and sampler["inputs"]["scheduler"] == "beta57"
    assert sampler["inputs"]["seed"] == 3


def test_expand_applies_and_coerces(store):
    graph = store.expand("sdxl_t2i", {"prompt": "a cat", "negative_prompt": "dogs", "seed": 42, "steps": "30",
                                      "cfg": 4, "width": 768.0, "HEIGHT": 1344, "sampler_name": "dpmpp_2m",
                                      "scheduler": "karras", "batch_size": 2})
    assert graph["6"]["inputs"]["text"] == "a cat" and graph["7"]["inputs"]["text"] == "dogs"
    assert {"seed": 42, "steps": 30, "cfg": 4.0, "sampler_name": "dpmpp_2m",
            "scheduler": "karras"}.items() <= graph["3"]["inputs"].items()
    assert graph["5"]["inputs"] == {"width": 768, "height": 1344, "batch_size": 2}
    assert isinstance(graph["3"]["inputs"]["steps"], int) and isinstance(graph["3"]["inputs"]["cfg"], float)
    # The stored template is untouched.
    assert store.get("sdxl_t2i").graph["6"]["inputs"]["text"] != "a cat"


def test_seed_is_random_when_omitted(store):
    seeds = {store.expand("sdxl_t2i", {})["3"]["inputs"]["seed"] for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s <= 2**64 - 1 for s in seeds)


def test_unknown_template_lists_available(store):
    with pytest.raises(UnknownTemplate) as info:
        store.expand("sdxl_nope", {})
    assert info.value.status == 422
    assert {"sdxl_t2i", "sdxl_res4lyf_t2i"} <= set(info.value.details["available"])
    assert "sdxl_t2i" in info.value.message


@pytest.mark.parametrize(
    ("mods", "param", "message"),
    [
        ({"steps": 0}, "steps", ">= 1"),
        ({"width": 1001}, "width", "multiple of 8"),
        ({"height": 4096}, "height", "<= 2048"),
        ({"cfg": "lots"}, "cfg", "must be a number"),
        ({"seed": 1.5}, "seed", "must be an integer"),
        ({"sampler_name": "res_9000"}, "sampler_name", "must be one of: euler"),
        ({"prompt": 7}, "prompt", "must be a string"),
        ({"checkpoint": "../../etc/passwd"}, "checkpoint", "must match"),
        ({"checkpoint": "!/x.safetensors"}, "checkpoint", "must match"),  # the whole string, not a part
        ({"cfg": float("nan")}, "cfg", "must be a number"),
        ({"colour": "red"}, "colour", "unknown parameter"),
        ({"batch_size": True}, "batch_size", "not a boolean"),
    ],
)
def test_invalid_modifications_list_what_is_allowed(store, mods, param, message):
    with pytest.raises(BadRequest) as info:
        store.expand("sdxl_t2i", mods)
    err = info.value
    assert err.status == 422 and type(err) is BadRequest
    [entry] = err.details["errors"]
    assert entry["param"] == param and message in entry["message"]
    assert err.details["allowed"]["width"] == {
        "type": "integer", "description": "image width in pixels (SDXL is trained around 1024x1024)",
        "default": 1024, "minimum": 512, "maximum": 2048, "multipleOf": 8,
    }
    assert "allowed: prompt, negative_prompt" in err.message


def test_all_errors_reported_at_once(store):
    with pytest.raises(BadRequest) as info:
        store.expand("sdxl_t2i", {"steps": -1, "width": 7, "nope": 1})
    assert [e["param"] for e in info.value.details["errors"]] == ["nope", "steps", "width"]


def test_list_gives_json_schema(store):
    listed = {t["name"]: t for t in store.list()}
    schema = listed["sdxl_t2i"]["schema"]
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == []
    assert schema["properties"]["seed"]["maximum"] == 2**64 - 1
    assert "random when omitted" in schema["properties"]["seed"]["description"]
    assert "euler" in schema["properties"]["sampler_name"]["enum"]
    json.dumps(schema)


def write_template(folder: Path, name: str, graph: dict, params: dict | None) -> None:
    (folder / f"{name}.json").write_text(json.dumps(graph))
    if params is not None:
        (folder / f"{name}.params.json").write_text(json.dumps({"parameters": params}))


GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def test_required_param_and_reload_on_change(tmp_path):
    write_template(tmp_path, "tiny", GRAPH, {"color": {"type": "integer", "minimum": 0, "maximum": 16777215,
                                                       "targets": ["1.color"]}})
    store = TemplateStore(tmp_path)
    with pytest.raises(BadRequest, match="color: is required"):
        store.expand("tiny", {})
    assert store.expand("tiny", {"color": 255})["1"]["inputs"]["color"] == 255
    write_template(tmp_path, "second", GRAPH, None)
    assert store.names() == ["second", "tiny"]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"w": {"type": "integer", "targets": ["9.width"]}}, "not in the graph"),
        ({"w": {"type": "integer", "targets": ["1.nope"]}}, "not in the graph"),
        ({"w": {"type": "integer", "default": 5, "minimum": 10, "targets": ["1.width"]}}, "default of w"),
        ({"w": {"type": "integer", "targets": ["width"]}}, "node_id.input_name"),
        ({"w": {"type": "float", "targets": ["1.width"]}}, "type"),
    ],
)
def test_broken_specs_are_reported_not_loaded(tmp_path, params, problem):
    write_template(tmp_path, "broken", GRAPH, params)
    write_template(tmp_path, "fine", GRAPH, None)
    store = TemplateStore(tmp_path)
    assert store.names() == ["fine"] and problem in store.errors["broken"]


async def test_routes_list_and_get(store):
    app = web.Application()
    add_routes(app, store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/workflows") as r:
                assert r.status == 200
                names = {t["name"]: t for t in (await r.json())["workflows"]}
            assert "properties" in names["sdxl_res4lyf_t2i"]["schema"]
            async with session.get(base + "/workflows/sdxl_t2i") as r:
                body = await r.json()
                assert r.status == 200 and body["graph"]["3"]["class_type"] == "KSampler"
            async with session.get(base + "/workflows/nope") as r:
                body = await r.json()
                assert r.status == 404 and body["error"]["type"] == "unknown_template"
    finally:
        await runner.cleanup()


def test_only_the_changed_template_is_read_again(tmp_path, monkeypatch):
    """Issue 10 item 6: template files are re-read only when they change, each on its own."""
    from comfy_bridge.templates import store as store_module

    write_template(tmp_path, "kept", GRAPH, None)
    write_template(tmp_path, "edited", GRAPH, None)
    store = TemplateStore(tmp_path)
    kept = store.get("kept")
    read: list[str] = []
    real = store_module.load_template
    monkeypatch.setattr(store_module, "load_template", lambda path: read.append(path.name) or real(path))
    for _ in range(3):
        store.expand("kept", {})
    assert read == []  # nothing changed: nothing read
    write_template(tmp_path, "edited", {**GRAPH, "9": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, None)
    os.utime(tmp_path / "edited.json", ns=(1, 1))  # a new mtime, however coarse the clock
    assert "9" in store.get("edited").graph
    assert read == ["edited.json"] and store.get("kept") is kept
