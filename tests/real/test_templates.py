"""The shipped templates (workflows/*.json + .params.json) through the bridge, on a real ComfyUI.

A template is only as good as its last run against the real nodes: its graph must load,
its parameters must land on inputs that exist, and every value it offers (enums) must be
one ComfyUI accepts. The SD1.5 random checkpoint stands in for SDXL (loading SDXL costs
~14 GB and minutes on a CPU): the graphs are architecture-agnostic.

Both templates bound width/height to 512..2048 (a legit floor for SDXL), so the runs use
512x512 and one step, the smallest they allow; on a 2-core CPU that is still about a
minute each (`slow`). 64 px is checked to be refused with a 422 naming the bound.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.real import graphs
from tests.real.launcher import RealComfy

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
TEMPLATES = ["sdxl_t2i", "sdxl_res4lyf_t2i"]
SMALLEST = {"width": 512, "height": 512, "steps": 1}  # the templates' own minimums
PNG = b"\x89PNG\r\n\x1a\n"


def _template(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    graph = json.loads((WORKFLOWS / f"{name}.json").read_text())
    params = json.loads((WORKFLOWS / f"{name}.params.json").read_text())["parameters"]
    return graph, params


def _needs_res4lyf(name: str, object_info: dict[str, Any]) -> None:
    if "res4lyf" in name and "ClownsharKSampler_Beta" not in object_info:
        pytest.skip("RES4LYF is not installed in this ComfyUI")


def _combo(object_info: dict[str, Any], class_type: str, input_name: str) -> list[Any] | None:
    inputs = object_info[class_type]["input"]
    spec = {**inputs.get("required", {}), **inputs.get("optional", {})}[input_name]
    # V1 nodes: [[options...], {...}]; V3 nodes: ["COMBO", {"options": [...]}].
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1:
        return spec[1].get("options")
    return None


def _accepted(value: Any, options: list[Any]) -> bool:
    # RES4LYF's sampler lists are "category/name" and match a bare name too (DualFormatList).
    return value in options or any(isinstance(o, str) and o.endswith(f"/{value}") for o in options)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_targets_and_enums_match_the_real_nodes(name: str, object_info: dict[str, Any]) -> None:
    _needs_res4lyf(name, object_info)
    graph, params = _template(name)
    assert not [n["class_type"] for n in graph.values() if n["class_type"] not in object_info]
    wrong: list[str] = []
    for pname, spec in params.items():
        for target in spec["targets"]:
            node, _, input_name = target.rpartition(".")
            class_type = graph[node]["class_type"]
            inputs = object_info[class_type]["input"]
            assert input_name in {**inputs.get("required", {}), **inputs.get("optional", {})}, (pname, target)
            options = _combo(object_info, class_type, input_name)
            if options is None or pname == "checkpoint":
                continue  # free values; the checkpoint list is whatever this machine holds
            offered = spec.get("enum") or [spec.get("default")]
            wrong += [f"{pname}={v!r} ({class_type}.{input_name})" for v in offered if not _accepted(v, options)]
    assert wrong == [], f"{name} offers values this ComfyUI refuses"


@pytest.mark.parametrize("name", TEMPLATES)
async def test_64px_is_refused_by_the_template_bounds(name: str, bridge) -> None:
    status, body = await bridge.generate(
        None, modifier=name,
        modifications={"checkpoint": graphs.SD15, "width": 64, "height": 64, "steps": 2},
    )
    assert status == 422, body
    errors = {e["param"]: e["message"] for e in body["error"]["errors"]}
    assert errors == {"width": "must be >= 512", "height": "must be >= 512"}, body


def _image(body: dict[str, Any]) -> Image.Image:
    (item,) = body["output"]
    raw = base64.b64decode(item["data"])
    assert raw.startswith(PNG) and item["mimetype"] == "image/png"
    return Image.open(io.BytesIO(raw))


def _history(comfy: RealComfy, prompt_id: str) -> dict[str, Any]:
    return comfy.get_json(f"/history/{prompt_id}")[prompt_id]


def _cached_nodes(entry: dict[str, Any]) -> set[str]:
    return {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", TEMPLATES)
async def test_template_renders_with_the_sd15_checkpoint(
    name: str, bridge, real_comfy: RealComfy, object_info: dict[str, Any]
) -> None:
    _needs_res4lyf(name, object_info)
    status, body = await bridge.generate(
        None, modifier=name,
        modifications={"checkpoint": graphs.SD15, "seed": 3, "prompt": "a small red fox", **SMALLEST},
    )
    assert status == 200, body
    assert _image(body).size == (512, 512)

    # What ComfyUI ran: the template's sampler node with our values, actually executed.
    entry = _history(real_comfy, body["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    ran = entry["prompt"][2]
    sampler_id = "3"
    assert ran["4"]["inputs"]["ckpt_name"] == graphs.SD15
    assert (ran["5"]["inputs"]["width"], ran["5"]["inputs"]["height"]) == (512, 512)
    assert ran[sampler_id]["inputs"]["steps"] == 1 and ran[sampler_id]["inputs"]["seed"] == 3
    assert ran["6"]["inputs"]["text"] == "a small red fox"
    assert sampler_id not in _cached_nodes(entry)
    if name == "sdxl_res4lyf_t2i":
        assert ran[sampler_id]["class_type"] == "ClownsharKSampler_Beta"
        assert (ran[sampler_id]["inputs"]["sampler_name"], ran[sampler_id]["inputs"]["scheduler"]) == (
            "res_2s", "beta57")
    else:
        assert ran[sampler_id]["class_type"] == "KSampler"
