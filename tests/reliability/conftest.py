"""Fixtures of the reliability tests: a supervisor factory around the fake ComfyUI script,
and a webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp import web

from comfy_bridge.comfyui.supervisor import ComfySupervisor
from tests.support import free_port, serve_app

HERE = Path(__file__).resolve().parent
FAKE_COMFY = HERE / "fake_comfy.py"
FIXTURES = HERE / "fixtures"




class Recorder:
    """A supervisor listener that keeps every (state, reason) it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, state: str, reason: str) -> None:
        self.events.append((state, reason))

    @property
    def states(self) -> list[str]:
        return [s for s, _ in self.events]


@pytest.fixture
async def make_supervisor(tmp_path: Path) -> AsyncIterator[Callable[..., ComfySupervisor]]:
    made: list[ComfySupervisor] = []

    def make(*fake_args: str, **kwargs) -> ComfySupervisor:
        kwargs.setdefault("log_path", tmp_path / "comfyui.log")
        kwargs.setdefault("backoff_s", (0.05,))
        kwargs.setdefault("probe_interval_s", 0.05)
        kwargs.setdefault("start_timeout_s", 20)
        kwargs.setdefault("cpu", True)
        sup = ComfySupervisor(
            tmp_path,
            port=free_port(),
            command=[sys.executable, str(FAKE_COMFY), *fake_args],
            **kwargs,
        )
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await sup.stop(grace_s=2)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]], asyncio.Event]]:
    """A webhook receiver on loopback: (url, bodies received, event set on each)."""
    got: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runners: list[web.AppRunner] = []
    port = await serve_app(app, runners)
    yield f"http://127.0.0.1:{port}/hook", got, arrived
    await runners[0].cleanup()
