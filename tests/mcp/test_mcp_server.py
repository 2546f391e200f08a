"""The MCP server driven in-process by the `mcp` SDK's own Client: tools listed with each
template's schema as is, a template and run_workflow called (image content back),
progress notifications, a bad argument as a tool error naming it, the job-handle path."""

from __future__ import annotations

import asyncio
import base64

import pytest
from mcp import Client

from tests.mcp.conftest import TEMPLATE
from tests.support import PNG_MAGIC, save_graph
from tests.worker.conftest import sd15_graph
from worker.mcp.server import build_server

pytestmark = pytest.mark.timeout(60)


async def test_lists_one_tool_per_template_with_its_schema_as_is(mcp_server, mcp_bridge):
    async with mcp_bridge.session.get(mcp_bridge.url + "/workflows") as r:
        listed = {w["name"]: w for w in (await r.json())["workflows"]}
    async with Client(mcp_server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"run_workflow", "list_templates", "get_result", TEMPLATE} <= set(tools)
    assert tools[TEMPLATE].input_schema == listed[TEMPLATE]["schema"]
    assert tools[TEMPLATE].description == "tiny SD1.5 text to image (test template)"
    assert tools["run_workflow"].input_schema["required"] == ["workflow"]


async def test_template_call_returns_image_content_and_sends_progress(mcp_server):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(mcp_server) as client:
        result = await client.call_tool(TEMPLATE, {"prompt": "a red fox"},
                                        progress_callback=on_progress)
    assert not result.is_error, result.content
    text, *rest = result.content
    assert text.type == "text" and '"request_id": "mcp-' in text.text and "timings_ms" in text.text
    [image] = [c for c in rest if c.type == "image"]
    assert image.mime_type == "image/png" and base64.b64decode(image.data)[:8] == PNG_MAGIC
    values = [p[0] for p in progress]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing
    assert any("KSampler" in (p[2] or "") for p in progress) and progress[-1][1] == 100.0


async def test_run_workflow_returns_image_content(mcp_server):
    async with Client(mcp_server) as client:
        result = await client.call_tool("run_workflow", {"workflow": save_graph(width=32, height=16)})
    assert not result.is_error, result.content
    assert [c.type for c in result.content] == ["text", "image"]
    assert result.structured_content["outputs"][0]["mimetype"] == "image/png"


async def test_bad_arguments_are_tool_errors_naming_the_parameter(mcp_server):
    async with Client(mcp_server) as client:
        wrong_type = await client.call_tool(TEMPLATE, {"prompt": "x", "steps": "many"})
        missing = await client.call_tool(TEMPLATE, {"steps": 3})
        no_graph = await client.call_tool("run_workflow", {"images": []})
    assert wrong_type.is_error and "'steps'" in wrong_type.content[0].text
    assert missing.is_error and "parameter 'prompt': is required" in missing.content[0].text
    assert no_graph.is_error and "'workflow'" in no_graph.content[0].text


async def test_a_failing_generation_is_a_tool_error_with_its_status(mcp_server):
    graph = sd15_graph(steps=2)
    graph["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    async with Client(mcp_server) as client:
        result = await client.call_tool("run_workflow", {"workflow": graph})
    assert result.is_error and "HTTP 422" in result.content[0].text
    assert "missing.safetensors" in result.content[0].text


async def test_a_call_past_the_tool_timeout_returns_a_job_handle_then_get_result(make_store, mcp_double):
    server = build_server(make_store(tool_timeout_s=0.3))
    mcp_double.hang_next_prompt()
    async with Client(server) as client:
        first = await client.call_tool("run_workflow", {"workflow": save_graph(), "request_id": "long-1"})
        assert not first.is_error
        assert first.structured_content == {"job_id": "long-1", "status": "running",
                                            "last": first.structured_content["last"]}
        assert "get_result" in first.content[0].text
        again = await client.call_tool("get_result", {"job_id": "long-1"})
        assert again.structured_content["status"] == "running"  # still held by ComfyUI
        mcp_double.release()
        while True:
            done = await client.call_tool("get_result", {"job_id": "long-1"})
            if done.structured_content.get("status") != "running":
                break
            await asyncio.sleep(0)
        unknown = await client.call_tool("get_result", {"job_id": "nope"})
    assert not done.is_error and [c.type for c in done.content] == ["text", "image"]
    assert done.structured_content["request_id"] == "long-1"
    assert unknown.is_error and "'job_id'" in unknown.content[0].text


async def test_run_workflow_with_an_input_image_audio_embedded_and_a_downscaled_preview(make_store):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((600, 400), 80).convert("RGB").save(buf, "PNG")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}},
        "3": {"class_type": "DoubleSineAudio", "inputs": {"seconds": 0.1, "frequency": 440.0}},
        "4": {"class_type": "SaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/tone"}},
    }
    server = build_server(make_store(image_cap_bytes=20_000))
    async with Client(server) as client:
        result = await client.call_tool("run_workflow", {
            "workflow": graph, "images": [{"name": "photo.png", "image": base64.b64encode(buf.getvalue()).decode()}]})
    assert not result.is_error, result.content
    [image] = [c for c in result.content if c.type == "image"]
    assert image.mime_type == "image/jpeg"  # the PNG is over the cap: a downscaled preview
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (600, 400)  # already under 1024 px
    [audio] = [c for c in result.content if c.type == "resource"]
    assert audio.resource.mime_type == "audio/wav" and base64.b64decode(audio.resource.blob)[:4] == b"RIFF"
    assert audio.resource.uri.endswith(".wav")
