"""Every refusal and failure: its status, a message saying what to fix, the contract body."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support import json_logs, save_graph


def assert_failure(status: int, body: dict, expected_status: int, error_type: str, *needles: str) -> dict:
    assert status == expected_status, body
    assert body["status"] == "failed"
    assert "id" in body
    err = body["error"]
    assert err["type"] == error_type, err
    assert isinstance(err["retriable"], bool)
    for needle in needles:
        assert needle in err["message"], (needle, err["message"])
    assert "Traceback" not in str(body)
    return err


SD_GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl_missing.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd"}},
}


async def test_body_not_json(bridge):
    status, body = await bridge.post(data=b"{nope")
    assert_failure(status, body, 422, "bad_request", "body is not JSON")


async def test_missing_input(bridge):
    status, body = await bridge.post({"workflow_json": save_graph()})
    assert_failure(status, body, 422, "bad_request", 'missing "input"')


async def test_workflow_and_modifier_together(bridge):
    status, body = await bridge.post({"input": {"request_id": "both", "workflow_json": save_graph(), "modifier": "sdxl"}})
    err = assert_failure(status, body, 422, "bad_request", "either workflow_json", "not both")
    assert body["id"] == "both"
    assert err["errors"][0]["loc"] == "input"


async def test_graph_not_an_object(bridge):
    status, body = await bridge.post({"input": {"workflow_json": [1, 2]}})
    assert_failure(status, body, 422, "bad_request", "input.workflow_json", "API-format graph")


async def test_node_without_class_type(bridge):
    graph = save_graph()
    del graph["1"]["class_type"]
    status, body = await bridge.generate(graph)
    err = assert_failure(status, body, 422, "invalid_workflow", "node '1' has no class_type")
    assert err["node_id"] == "1"


async def test_link_to_missing_node(bridge):
    graph = save_graph()
    graph["2"]["inputs"]["images"] = ["42", 0]
    status, body = await bridge.generate(graph)
    assert_failure(status, body, 422, "invalid_workflow", "node '2' (SaveImage)", "links to node '42'")


async def test_unknown_classes_named_before_submitting(bridge, double):
    graph = save_graph()
    graph["3"] = {"class_type": "NoSuchNode_res4lyf", "inputs": {"image": ["1", 0]}}
    graph["4"] = {"class_type": "AlsoMissing", "inputs": {}}
    status, body = await bridge.generate(graph)
    err = assert_failure(status, body, 422, "missing_node_classes", "AlsoMissing", "NoSuchNode_res4lyf")
    assert err["classes"] == ["AlsoMissing", "NoSuchNode_res4lyf"]
    assert not double.requests_to("/prompt", "POST")


async def test_value_out_of_range_passes_node_errors(bridge):
    status, body = await bridge.generate(save_graph(width=-5))
    err = assert_failure(status, body, 422, "workflow_rejected", "node 1 (EmptyImage)", "smaller than min")
    assert err["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"


async def test_missing_model_named_with_folder(bridge):
    status, body = await bridge.generate(SD_GRAPH)
    err = assert_failure(status, body, 422, "missing_models", "sdxl_missing.safetensors", "models/checkpoints/")
    assert err["models"][0] == {"node_id": "4", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
                                "file": "sdxl_missing.safetensors", "folder": "checkpoints"}


async def test_payload_over_limit(double, make_bridge):
    bridge = await make_bridge(double.url, double.root, max_body_bytes=4096)
    status, body = await bridge.post({"input": {"workflow_json": save_graph(), "pad": "x" * 10_000}})
    assert_failure(status, body, 413, "payload_too_large", "4096-byte limit")


@pytest.mark.parametrize("rid", ["../etc", "a/b", "a\\b", "x" * 129])
async def test_request_id_with_path_characters(bridge, rid):
    status, body = await bridge.generate(save_graph(), request_id=rid)
    assert_failure(status, body, 422, "bad_request", "input.request_id", "no path characters")
    assert body["id"] is None


async def test_unknown_template_without_store(bridge):
    status, body = await bridge.post({"input": {"modifier": "nope", "modifications": {}}})
    assert status == 422 and body["error"]["type"] == "unknown_template"


async def test_execution_error_names_node(bridge, double):
    double.fail_next_prompt("PIL.UnidentifiedImageError", "cannot identify image file 'x.png'", node_id="2")
    status, body = await bridge.generate(save_graph(), request_id="boom")
    err = assert_failure(status, body, 500, "execution_error", "node 2 (SaveImage)", "cannot identify image file")
    assert err["node_id"] == "2" and err["node_type"] == "SaveImage"
    assert err["exception_type"] == "PIL.UnidentifiedImageError"
    assert body["id"] == "boom" and body["prompt_id"]


async def test_out_of_memory_is_retried_after_free(bridge, double):
    double.fail_next_prompt()  # torch.OutOfMemoryError
    status, body = await bridge.generate(save_graph())
    assert status == 200, body
    assert double.requests_to("/free", "POST")


async def test_out_of_memory_twice_fails_saying_so(bridge, double):
    double.fail_next_prompt()
    double.fail_next_prompt()
    status, body = await bridge.generate(save_graph())
    assert_failure(status, body, 500, "out_of_memory", "ran out of GPU memory")


async def test_cuda_fatal_error_calls_on_fatal(double, make_bridge):
    class Supervisor:
        seen: list[str] = []

        def mark_fatal(self, message: str) -> None:
            self.seen.append(message)

    sup = Supervisor()
    bridge = await make_bridge(double.url, double.root, supervisor=sup)
    double.fail_next_prompt("RuntimeError", "CUDA error: an illegal memory access was encountered")
    status, body = await bridge.generate(save_graph())
    err = assert_failure(status, body, 500, "execution_error", "fatal GPU error")
    assert err["fatal"] is True and err["retriable"] is True
    assert sup.seen and "illegal memory access" in sup.seen[0]


async def test_comfyui_down_is_503_retriable(make_bridge, tmp_path):
    from tests.support import free_port

    bridge = await make_bridge(f"http://127.0.0.1:{free_port()}")
    status, body = await bridge.generate(save_graph())
    err = assert_failure(status, body, 503, "comfyui_unavailable", "not reachable")
    assert err["retriable"] is True


async def test_inline_limit_is_502_and_files_kept(double, make_bridge, tmp_path):
    bridge = await make_bridge(double.url, double.root, max_inline_bytes=10, spool_dir=tmp_path / "spool")
    status, body = await bridge.generate(save_graph(), request_id="too-big")
    assert_failure(status, body, 502, "delivery_failed", "inline delivery")
    [out] = body["output"]
    # Kept on the spool under its spool_key; ComfyUI's output folder is emptied (issue 10 item 5).
    assert out["spool_key"].startswith("too-big/") and (tmp_path / "spool" / out["spool_key"]).is_file()
    await bridge.runner.drain()
    assert not [p for p in double.output_dir.rglob("*") if p.is_file()]


async def test_a_graph_whose_links_loop_is_422_naming_the_cycle(bridge):
    graph = save_graph()
    graph["1"]["inputs"]["loop"] = ["2", 0]  # EmptyImage <- SaveImage <- EmptyImage
    status, body = await bridge.generate(graph)
    assert status == 422, body
    assert body["error"]["type"] == "invalid_workflow"
    assert "cycle" in body["error"]["message"] and body["error"]["cycle"] in (["1", "2", "1"], ["2", "1", "2"])
    self_link = save_graph()
    self_link["2"]["inputs"]["again"] = ["2", 0]
    status, body = await bridge.generate(self_link)
    assert status == 422 and body["error"]["cycle"] == ["2", "2"], body


async def test_external_comfyui_without_its_path_says_at_start_it_cannot_clean_up(double, make_bridge):
    """Issue 10 item 5: outputs pile up in a ComfyUI folder the bridge cannot reach; say so."""
    with json_logs(logging.WARNING) as stream:
        await make_bridge(double.url)  # no comfyui_path
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if "cannot be removed" in x]
    assert line["level"] == "warning" and "COMFY_BRIDGE_COMFYUI_PATH" in line["msg"]
    with json_logs(logging.WARNING) as stream:
        await make_bridge(double.url, double.root)
    assert "cannot be removed" not in stream.getvalue()
