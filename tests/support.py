"""Helpers shared by the test folders: ports, small graphs, a bridge handle."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator, NoReturn

import aiohttp
import pytest
from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.app import RUNNER_KEY
from comfy_bridge.settings import BridgeSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def in_ci() -> bool:
    """CI=true (GitHub Actions and most runners set it): every tier must run there."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def service_missing(reason: str) -> NoReturn:
    """A service a test needs (SeaweedFS, Docker) is not there: skip on a laptop, but fail
    under CI, where a skip would let the run pass without testing anything."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails the run instead of skipping it)",
                    pytrace=False)
    pytest.skip(reason)


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


def silent_graph(seconds: float, color: int = 255, prefix: str = "t/slow") -> dict:
    """save_graph with a node between that works `seconds` without sending any event
    (the double's DoubleSilentWait: a slow node with no progress bar)."""
    graph = save_graph(color=color, prefix=prefix)
    graph["3"] = {"class_type": "DoubleSilentWait", "inputs": {"images": ["1", 0], "seconds": seconds}}
    graph["2"]["inputs"]["images"] = ["3", 0]
    return graph


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


async def serve_app(app: web.Application, runners: list[web.AppRunner], **runner_kw: Any) -> int:
    """Start `app` on an ephemeral loopback port; the caller cleans up `runners`."""
    runner = web.AppRunner(app, access_log=None, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def vast_env(base: dict[str, str], *, report_addr: str, port: int, container_id: int) -> dict[str, str]:
    """A worker process's environment as Vast sets it, pointing at a router emulator.

    Settings of the caller's own environment (COMFY_*, VAST_*, S3_*) are left out so a
    developer's shell cannot change what a test runs."""
    env = {k: v for k, v in base.items()
           if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_", "S3_"))}
    env.update({
        "CONTAINER_ID": str(container_id),
        "REPORT_ADDR": report_addr,
        "PUBLIC_IPADDR": "127.0.0.1",
        "WORKER_PORT": str(port),
        f"VAST_TCP_PORT_{port}": str(port),
        "WORKER_HTTP_PORT": str(free_port()),
        "UNSECURED": "false",
        "USE_SSL": "false",
    })
    return env


@contextlib.contextmanager
def json_logs(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Everything logged meanwhile, as the JSON lines the worker writes (logs.JsonFormatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.setLevel(level)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
