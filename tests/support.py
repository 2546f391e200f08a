"""Helpers shared by the test folders: ports, small graphs, a bridge handle."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from comfy_bridge.app import RUNNER_KEY
from comfy_bridge.settings import BridgeSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for servers that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_graph(width: int = 64, height: int = 48, batch: int = 1, color: int = 255, prefix: str = "t/out") -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@dataclass
class Bridge:
    url: str
    app: web.Application
    session: aiohttp.ClientSession
    settings: BridgeSettings

    async def post(self, body: Any = None, *, data: bytes | None = None) -> tuple[int, dict]:
        kw: dict[str, Any] = {"data": data, "headers": {"Content-Type": "application/json"}} if data is not None else {"json": body}
        async with self.session.post(self.url + "/generate/sync", **kw) as r:
            return r.status, await r.json()

    async def generate(self, graph: dict, **fields: Any) -> tuple[int, dict]:
        return await self.post({"input": {"workflow_json": graph, **fields}})

    @property
    def runner(self):
        return self.app[RUNNER_KEY]
