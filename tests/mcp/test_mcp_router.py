"""The MCP server in front of a Vast endpoint: through the router emulator to the real
PyWorker's /generate/stream (signed, routed in units), as `comfy-worker mcp --router`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.worker.conftest import double, emulator, sd15_graph, start_worker  # noqa: F401 - fixtures
from worker.client import WorkerClient
from worker.mcp.backend import RouterBackend
from worker.mcp.jobs import JobStore
from worker.mcp.server import REPO_WORKFLOWS, build_server

pytestmark = pytest.mark.timeout(90)


async def test_run_workflow_through_the_router_and_the_pyworker(start_worker, double, emulator):  # noqa: F811
    w = await start_worker(double)
    await w.wait_ready()
    backend = RouterBackend(WorkerClient("test-endpoint", "test-key", router_url=emulator.url), Path(REPO_WORKFLOWS))
    store = JobStore(backend)
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    try:
        async with Client(build_server(store)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("run_workflow", {"workflow": sd15_graph(steps=3), "request_id": "mcp-r1"},
                                            progress_callback=on_progress)
    finally:
        await store.aclose()
    assert "sdxl_t2i" in names  # the repo's templates, as the worker image serves them
    assert not result.is_error, result.content
    assert [c.type for c in result.content] == ["text", "image"]
    assert progress and emulator.routed[-1]["cost"] > 1
    done = await w.wait_deleted(lambda d: d["request_idx"] == emulator.routed[-1]["request_idx"])
    assert done["success"] is True
