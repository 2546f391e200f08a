"""Fixtures of the MCP tests: a bridge (in front of the ComfyUI double) with one small
template of its own, and the MCP server over it, driven by the SDK's own Client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Bridge
from tests.worker.conftest import CKPT, sd15_graph
from worker.mcp.backend import BridgeBackend
from worker.mcp.jobs import JobStore
from worker.mcp.server import build_server

TEMPLATE = "tiny_t2i"


def write_template(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TEMPLATE}.json").write_text(json.dumps(sd15_graph(steps=4)))
    (folder / f"{TEMPLATE}.params.json").write_text(json.dumps({
        "description": "tiny SD1.5 text to image (test template)",
        "parameters": {
            "prompt": {"type": "string", "description": "what to draw", "min_length": 1, "targets": ["6.text"]},
            "steps": {"type": "integer", "default": 4, "minimum": 1, "maximum": 50, "targets": ["3.steps"]},
        },
    }))


@pytest.fixture
async def mcp_double(make_comfy_double):
    return await make_comfy_double(models={"checkpoints": [CKPT]}, exec_ms=40)


@pytest.fixture
async def mcp_bridge(mcp_double, make_bridge, tmp_path) -> Bridge:
    write_template(tmp_path / "workflows")
    return await make_bridge(mcp_double.url, mcp_double.root, workflows_dir=tmp_path / "workflows")


@pytest.fixture
async def make_store(mcp_bridge):
    stores: list[JobStore] = []

    def make(**kw) -> JobStore:
        store = JobStore(BridgeBackend(mcp_bridge.url), **kw)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture
def mcp_server(make_store):
    return build_server(make_store())
