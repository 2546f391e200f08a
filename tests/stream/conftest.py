"""Fixtures of the streaming tests: a bridge in front of a ComfyUI double that has the
SD1.5 checkpoint (so KSampler runs and reports steps), and a reader of the SSE answer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from comfy_bridge.jobs import stream_protocol as sp
from tests.support import Bridge
from tests.worker.conftest import CKPT, sd15_graph  # noqa: F401 - re-exported for the tests here
from tests.worker.conftest import double, emulator, start_worker  # noqa: F401 - the PyWorker fixtures


@dataclass
class Streamed:
    """What one POST /generate/stream answered: status, type, events (or a JSON body)."""

    status: int
    content_type: str
    events: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)  # each event's data as sent
    keepalives: int = 0
    body: Any = None
    arrived: list[float] = field(default_factory=list)

    @property
    def final(self) -> Any:
        return self.events[-1]


async def read_stream(resp: aiohttp.ClientResponse, on_event: Any = None) -> Streamed:
    out = Streamed(resp.status, resp.content_type)
    if resp.content_type != sp.CONTENT_TYPE:
        out.body = await resp.json()
        return out
    decoder = sp.SSEDecoder()
    async for chunk in resp.content.iter_any():
        out.keepalives += chunk.count(sp.KEEPALIVE)
        for name, data in decoder.feed(chunk):
            event = sp.parse(name, data)
            out.names.append(name)
            out.raw.append(data)
            out.events.append(event)
            out.arrived.append(time.monotonic())
            if on_event is not None:
                await on_event(event)
    return out


async def post_stream(bridge: Bridge, job: dict[str, Any], on_event: Any = None) -> Streamed:
    async with bridge.session.post(bridge.url + "/generate/stream", json={"input": job}) as resp:
        return await read_stream(resp, on_event)


@pytest.fixture
async def sampler_double(make_comfy_double):
    return await make_comfy_double(models={"checkpoints": [CKPT]}, exec_ms=40)


@pytest.fixture
async def bridge(sampler_double, make_bridge) -> Bridge:
    return await make_bridge(sampler_double.url, sampler_double.root)
