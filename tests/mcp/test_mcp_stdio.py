"""`comfy-worker mcp` over stdio, started the way an MCP client starts it, driven by the
SDK's own Client: tools listed, a template called with progress notifications, image
content back; and over streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.mcp.conftest import TEMPLATE
from tests.support import free_port, save_graph
from tests.worker.conftest import REPO, stop_process

pytestmark = pytest.mark.timeout(90)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_"))}


async def test_stdio_lists_and_calls_the_tools(mcp_bridge, tmp_path):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "worker", "mcp", "--bridge-url", mcp_bridge.url],
        cwd=str(REPO), env=_env())
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool(TEMPLATE, {"prompt": "a lighthouse", "steps": 3}, progress_callback=on_progress)
    assert {"run_workflow", "list_templates", "get_result", TEMPLATE} <= names
    assert not result.is_error, result.content
    assert [c.type for c in result.content] == ["text", "image"]
    assert progress and progress == sorted(progress)


async def test_streamable_http_serves_the_same_tools(mcp_bridge):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "mcp", "--transport", "http", "--port", str(port),
        "--bridge-url", mcp_bridge.url, "--log-level", "INFO", cwd=str(REPO), env=_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        while True:  # uvicorn says so on stderr once it listens
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "mcp --transport http exited"
            if b"Uvicorn running" in line or b"Application startup complete" in line:
                break
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("run_workflow", {"workflow": save_graph()})
        assert TEMPLATE in names
        assert not result.is_error and [c.type for c in result.content] == ["text", "image"]
    finally:
        await stop_process(proc)
