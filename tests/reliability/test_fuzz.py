"""Fuzzing the request contract: malformed bodies, payloads, graphs and input images
get a 4xx with the contract's JSON failure body, never a 5xx or a crash, and the
bridge's memory stays bounded while it refuses them.

Hypothesis runs derandomized with a bounded number of examples and no example
database, so CI sees the same inputs every run. The bridge and the ComfyUI double are
shared by every example of a test (that is the point: one process taking it all).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gc
import json
import string
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from comfy_bridge.schemas.job import FailureResponse
from comfy_bridge.observability import Metrics
from tests.comfy_double import ComfyDouble

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- strategies --------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)

CLASS_TYPES = ["EmptyImage", "SaveImage", "LoadImage", "KSampler", "CheckpointLoaderSimple", "VAEDecode",
               "CLIPTextEncode", "EmptyLatentImage", "PreviewImage", "ImageScale", "NoSuchNode", ""]
node_ids = st.sampled_from(["1", "2", "3", "9", "x", "", "01"])
input_values = (
    json_scalars
    | st.tuples(node_ids, st.integers(-2, 5)).map(list)          # a link, maybe dangling
    | st.lists(json_scalars, max_size=3)
    | st.sampled_from(["sd15.safetensors", "missing.ckpt", "euler", "no_sampler", "../../etc/passwd", "cvw/x.png"])
)
nodes = st.fixed_dictionaries(
    {"class_type": st.sampled_from(CLASS_TYPES) | st.text(max_size=20) | json_scalars},
    optional={"inputs": st.dictionaries(
        st.sampled_from(["images", "image", "width", "height", "batch_size", "color", "filename_prefix",
                         "ckpt_name", "seed", "steps", "cfg", "model", "text", "clip", "samples", "vae"])
        | st.text(max_size=8),
        input_values, max_size=6) | json_scalars,
        "_meta": json_values},
)
shapeless_graphs = st.dictionaries(node_ids | st.text(max_size=6), nodes | json_scalars, max_size=5)

# A text-to-image graph the double runs; mutated, it reaches ComfyUI's own validation
# (types, ranges, combo values, links) and sometimes runs.
CKPT = "sd15.safetensors"
SD_GRAPH: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "fuzz"}},
}
# Values kept small where they would be honoured: a valid 16384x16384 image is not malformed.
mutant_values = (
    st.none() | st.booleans() | st.integers(-3, 80) | st.sampled_from([2**31, -2**63, 10**6, 1e308, -0.0, 0.5])
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-100, max_value=100)
    | st.sampled_from(["", "euler", "res_2s", "karras", "missing.safetensors", CKPT, "../" + CKPT, "64"])
    | st.text(max_size=20)
    | st.tuples(st.sampled_from(["3", "4", "5", "6", "7", "8", "9", "42"]), st.integers(-1, 4)).map(list)
    | st.lists(st.integers(0, 3), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
)


@st.composite
def mutated_graphs(draw: st.DrawFn) -> dict[str, Any]:
    graph = copy.deepcopy(SD_GRAPH)
    for _ in range(draw(st.integers(1, 3))):
        nid = draw(st.sampled_from(sorted(graph)))
        node = graph[nid]
        op = draw(st.sampled_from(["set", "set", "set", "drop_input", "class", "drop_node", "add_input"]))
        inputs = node.setdefault("inputs", {})
        if op == "set" and inputs:
            inputs[draw(st.sampled_from(sorted(inputs)))] = draw(mutant_values)
        elif op == "drop_input" and inputs:
            inputs.pop(draw(st.sampled_from(sorted(inputs))))
        elif op == "class":
            node["class_type"] = draw(st.sampled_from(CLASS_TYPES))
        elif op == "drop_node" and len(graph) > 1:
            graph.pop(nid)
        else:
            inputs[draw(st.text(min_size=1, max_size=8))] = draw(mutant_values)
    return graph


graphs = mutated_graphs() | shapeless_graphs

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
image_bytes = (
    st.binary(max_size=300)
    | st.just(PNG_1PX).flatmap(lambda b: st.integers(0, len(b) - 1).map(lambda n: b[:n]))  # truncated PNG
    | st.binary(min_size=1, max_size=40).map(lambda b: PNG_1PX[:16] + b)                   # PNG header, junk
)
image_values = (
    image_bytes.map(lambda b: base64.b64encode(b).decode())
    | image_bytes.map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode())
    | st.sampled_from(["data:", "data:image/png,abc", "data:image/png;base64,!!!", "====", "not base64 at all",
                       "s3://", "s3://b", "https://", "http://127.0.0.1:1/x.png", "ftp://x/y.png",
                       "file:///etc/passwd", "https://[::1/x"])
    | st.text(max_size=60)
)
good_names = st.sampled_from(["in.png", "in.jpg", "in.webp", "in"])
image_names = good_names | st.sampled_from(["../in.png", ".hidden.png", "a/b.png", "", "in.mp4"]) | st.text(max_size=20)
images = (
    st.lists(st.fixed_dictionaries({"name": good_names, "image": image_values}), min_size=1, max_size=2)
    | st.lists(st.fixed_dictionaries({"name": image_names, "image": image_values}) | json_values, max_size=3)
)

# A graph that runs, into which an image is loaded: only the image can be wrong.
LOAD_GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fuzz"}},
}

input_fields = st.fixed_dictionaries({}, optional={
    "request_id": json_scalars | st.text(alphabet=string.printable, max_size=140),
    "workflow_json": graphs | json_values,
    "workflow": graphs | json_values,
    "modifier": json_scalars | st.sampled_from(["txt2img", "no-such-template", "../x"]),
    "modifications": json_values,
    "images": images | json_values,
    "s3": json_values | st.fixed_dictionaries({}, optional={
        "bucket_name": json_scalars, "endpoint_url": json_scalars, "access_key_id": json_scalars,
        "secret_access_key": json_scalars, "prefix": json_scalars, "region": json_scalars, "extra": json_scalars}),
    "webhook": json_values | st.fixed_dictionaries({"url": json_scalars | st.sampled_from(["ftp://x", "http://", "https://a"])},
                                                   optional={"secret": json_scalars, "extra_params": json_values}),
    "return_outputs_as_base64": json_scalars,
    "output": json_values | st.fixed_dictionaries({}, optional={"format": json_scalars, "quality": json_scalars}),
    "timeout_s": json_scalars,
})


# --- checks --------------------------------------------------------------------------------

def check(status: int, raw: bytes, accept_success: bool = True) -> None:
    """A 4xx with the contract's failure body (or, for an input that happens to be valid, a 200)."""
    assert status < 500, f"{status}: {raw[:600]!r}"
    body = json.loads(raw)
    with contextlib.suppress(InvalidArgument):  # outside @given there is nothing to record
        event(f"{status} {body.get('error', {}).get('type', body.get('status'))}")  # --hypothesis-show-statistics
    if status == 200 and accept_success:
        assert body["status"] == "success"
        return
    assert 400 <= status < 500, (status, body)
    failure = FailureResponse.model_validate(body)
    assert failure.error.message and failure.error.type


async def post_raw(bridge, data: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    async with bridge.session.post(bridge.url + "/generate/sync", data=data,
                                   headers={"Content-Type": content_type}) as r:
        return r.status, await r.read()


@pytest.fixture
async def fuzz_bridge(make_bridge, make_comfy_double, tmp_path):
    double: ComfyDouble = await make_comfy_double(models={"checkpoints": [CKPT]})
    return await make_bridge(double.url, double.root, spool_dir=tmp_path / "spool",
                             max_body_bytes=256 * 1024, default_timeout_s=120, metrics=Metrics())


# --- tests ---------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
async def test_arbitrary_bytes(fuzz_bridge, data: bytes):
    status, raw = await post_raw(fuzz_bridge, data)
    check(status, raw, accept_success=False)


@FUZZ
@given(body=json_values | st.fixed_dictionaries({"input": json_values}))
async def test_arbitrary_json(fuzz_bridge, body: Any):
    status, raw = await post_raw(fuzz_bridge, json.dumps(body).encode())
    check(status, raw, accept_success=False)


@FUZZ
@given(fields=input_fields)
async def test_malformed_payloads(fuzz_bridge, fields: dict[str, Any]):
    status, raw = await post_raw(fuzz_bridge, json.dumps({"input": fields}).encode())
    check(status, raw)


@FUZZ
@given(graph=graphs)
async def test_malformed_graphs(fuzz_bridge, graph: dict[str, Any]):
    status, raw = await post_raw(fuzz_bridge, json.dumps({"input": {"workflow_json": graph}}).encode())
    check(status, raw)


@FUZZ
@given(imgs=images)
async def test_malformed_input_images(fuzz_bridge, imgs: list[Any]):
    body = {"input": {"workflow_json": LOAD_GRAPH, "images": imgs}}
    status, raw = await post_raw(fuzz_bridge, json.dumps(body).encode())
    check(status, raw)


async def test_deep_nesting_and_huge_bodies(fuzz_bridge):
    deep = "[" * 100_000 + "]" * 100_000
    for data in (deep.encode(), ('{"input": ' + deep + "}").encode(),
                 json.dumps({"input": {"workflow_json": {"1": {"class_type": "EmptyImage", "inputs": json.loads(
                     "[" * 500 + "]" * 500)}}}}).encode(),
                 b"{" * 300_000,
                 json.dumps({"input": {"images": [{"name": "a.png", "image": "A" * 400_000}]}}).encode()):
        status, raw = await post_raw(fuzz_bridge, data)
        check(status, raw, accept_success=False)


async def test_memory_stays_bounded_under_malformed_load(fuzz_bridge):
    """300 refused requests, each carrying ~200 KB, leave no more than a few MB behind."""
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(150_000)).decode()
    payloads = [
        json.dumps({"input": {"workflow_json": LOAD_GRAPH, "images": [{"name": "in.png", "image": junk}],
                              "request_id": f"mem-{i}"}}).encode()
        if i % 3 == 0 else
        json.dumps({"input": {"workflow_json": {"1": {"class_type": "NoSuchNode", "inputs": {"blob": junk}}}}}).encode()
        if i % 3 == 1 else
        (b'{"input": {"workflow_json": ' + junk.encode() + b"}")
        for i in range(300)
    ]
    for data in payloads[:30]:  # warm caches, pools and lazily built objects
        status, raw = await post_raw(fuzz_bridge, data)
        check(status, raw, accept_success=False)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for data in payloads[30:]:
            status, raw = await post_raw(fuzz_bridge, data)
            check(status, raw, accept_success=False)
        await fuzz_bridge.runner.drain()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = after - before
    # 270 requests x 200 KB = 54 MB went through; a leak of even one body each would show.
    assert grown < 8 * 1024 * 1024, f"traced memory grew by {grown / 1e6:.1f} MB"
