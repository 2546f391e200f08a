"""Fixtures shared by every test folder. Feature folders keep their own conftest.py.

`comfy_double`: a started ComfyDouble (tests/comfy_double) on an ephemeral port, closed
after the test. `make_comfy_double(**kwargs)`: the same with constructor options
(exec_ms, models, object_info_extra, history_lag_s, previews, root); all are closed.
`make_bridge(comfyui_url, comfyui_path=None, **settings)`: a bridge app on an ephemeral
port (tests.support.Bridge), cleaned up after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from comfy_bridge.app import build_app
from comfy_bridge.settings import BridgeSettings
from tests.comfy_double import ComfyDouble
from tests.support import Bridge, serve_app


@pytest.fixture
async def make_comfy_double(tmp_path) -> AsyncIterator[Callable[..., Awaitable[ComfyDouble]]]:
    made: list[ComfyDouble] = []

    async def make(**kwargs: Any) -> ComfyDouble:
        kwargs.setdefault("root", tmp_path / f"comfy{len(made)}")
        double = ComfyDouble(**kwargs)
        made.append(double)
        await double.start()
        return double

    yield make
    for double in made:
        await double.close()


@pytest.fixture
async def comfy_double(make_comfy_double) -> ComfyDouble:
    return await make_comfy_double()


@pytest.fixture
async def make_bridge() -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(comfyui_url: str, comfyui_path: Any = None, **kw: Any) -> Bridge:
        extra = {k: kw.pop(k) for k in ("supervisor", "workload_fn", "destinations", "metrics") if k in kw}
        settings = BridgeSettings(comfyui_url=comfyui_url, comfyui_path=comfyui_path, **kw)
        app = build_app(settings, **extra)
        port = await serve_app(app, runners, handler_cancellation=True)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        sessions.append(session)
        return Bridge(f"http://127.0.0.1:{port}", app, session, settings)

    yield make
    for s in sessions:
        await s.close()
    for r in runners:
        await r.cleanup()
