"""Fixtures of the bridge tests: a fresh ComfyUI double and a bridge app in front of it."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from comfy_bridge.app import RUNNER_KEY, build_app
from comfy_bridge.settings import BridgeSettings
from tests.comfy_double import ComfyDouble

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
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


@pytest.fixture
async def double(comfy_double: ComfyDouble) -> ComfyDouble:
    """The shared double (tests/conftest.py), fresh for each test."""
    return comfy_double


@pytest.fixture
async def make_bridge() -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(comfyui_url: str, comfyui_path: Any = None, **kw: Any) -> Bridge:
        extra = {k: kw.pop(k) for k in ("supervisor", "workload_fn", "destinations", "metrics") if k in kw}
        settings = BridgeSettings(comfyui_url=comfyui_url, comfyui_path=comfyui_path, **kw)
        app = build_app(settings, **extra)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        sessions.append(session)
        return Bridge(f"http://127.0.0.1:{port}", app, session, settings)

    yield make
    for s in sessions:
        await s.close()
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def bridge(double: ComfyDouble, make_bridge) -> Bridge:
    """A bridge that reads outputs from the double's folder (the production fast path)."""
    return await make_bridge(double.url, double.root)
