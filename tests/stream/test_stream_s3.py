"""Outputs bound for S3 (a real SeaweedFS) come as `output` events with their URLs before
the final `result`; the MCP server links them (and previews the image) in its result."""

from __future__ import annotations

import aiohttp
import pytest
from mcp import Client
from pydantic import SecretStr

from comfy_bridge.settings import S3Settings
from tests.io.conftest import s3_env, seaweed  # noqa: F401 - the session's SeaweedFS
from tests.stream.conftest import post_stream
from tests.support import save_graph
from worker.mcp.backend import BridgeBackend
from worker.mcp.jobs import JobStore
from worker.mcp.server import build_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def s3_bridge(seaweed, make_comfy_double, make_bridge):  # noqa: F811
    double = await make_comfy_double()
    env = s3_env(seaweed, seaweed.bucket("streamed"), prefix="st")
    for key in ("access_key_id", "secret_access_key"):
        env[key] = SecretStr(env[key])
    return await make_bridge(double.url, double.root, s3=S3Settings(**env, retries=1), allow_private_urls=True)


async def test_s3_outputs_are_output_events_before_the_result(s3_bridge):
    s = await post_stream(s3_bridge, {"workflow_json": save_graph(batch=2), "request_id": "s3-st"})
    assert s.names[-1] == "result" and s.names.count("output") == 2
    outputs = [e for e in s.events if e.event == "output"]
    assert all(o.output.url and o.output.s3_key.startswith("st/s3-st/") for o in outputs)
    assert {o.output.s3_key for o in outputs} == {o.s3_key for o in s.final.response.output}
    async with aiohttp.ClientSession() as http:
        async with http.get(outputs[0].output.url) as r:
            assert r.status == 200 and (await r.read())[:4] == b"\x89PNG"


async def test_mcp_links_s3_outputs_and_previews_the_image(s3_bridge):
    store = JobStore(BridgeBackend(s3_bridge.url))
    try:
        async with Client(build_server(store)) as client:
            result = await client.call_tool("run_workflow", {"workflow": save_graph()})
    finally:
        await store.aclose()
    assert not result.is_error, result.content
    kinds = [c.type for c in result.content]
    assert kinds == ["text", "resource_link", "image"]
    link = result.content[1]
    assert link.mime_type == "image/png" and link.uri.startswith("http") and link.uri in result.content[0].text
