"""Where the MCP server's generations run: a Vast endpoint through its router, or a bridge.

Both give the same two things: the workflow templates (name, description, JSON Schema
of their parameters) and a request's stream of typed events
(comfy_bridge/jobs/stream_protocol.py) whose failure is raised as the comfy_bridge
error class it names. Through the router, requests go via WorkerClient.stream (signed,
routed, retried: worker/client.py) and templates are read from the local workflows/
folder, the same files the worker image serves; with `--bridge-url` both come from the
bridge itself (`GET /workflows`, `POST /generate/stream`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Protocol

import aiohttp

from comfy_bridge.errors import ComfyUnavailable
from comfy_bridge.jobs import stream_protocol as sp
from comfy_bridge.templates import TemplateStore
from worker.call_outcome import Retry, failure_error
from worker.client import WorkerClient
from worker.stream_client import read_events


class Backend(Protocol):
    async def templates(self) -> list[dict[str, Any]]: ...

    def stream(self, job: dict[str, Any], deadline_s: float) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...


class RouterBackend:
    """A Vast endpoint (or the local emulator) through its router."""

    def __init__(self, client: WorkerClient, workflows_dir: Path) -> None:
        self.client = client
        self.store = TemplateStore(workflows_dir)

    async def templates(self) -> list[dict[str, Any]]:
        return self.store.list()

    async def stream(self, job: dict[str, Any], deadline_s: float) -> AsyncIterator[Any]:
        async with contextlib.aclosing(self.client.stream(job, deadline_s=deadline_s)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        await self.client.aclose()


class BridgeBackend:
    """A comfy_bridge reached directly (`comfy-worker bridge`, or a worker's loopback bridge)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def templates(self) -> list[dict[str, Any]]:
        try:
            async with self._http().get(f"{self.url}/workflows", timeout=aiohttp.ClientTimeout(total=30)) as r:
                r.raise_for_status()
                body = await r.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyUnavailable(f"the bridge at {self.url} did not list its workflows ({exc})") from exc
        return list(body.get("workflows", [])) if isinstance(body, dict) else []

    async def stream(self, job: dict[str, Any], deadline_s: float) -> AsyncIterator[Any]:
        try:
            async with self._http().post(f"{self.url}{sp.ROUTE}", json={"input": job},
                                         timeout=aiohttp.ClientTimeout(total=deadline_s)) as r:
                async with contextlib.aclosing(read_events(r, self.url)) as events:
                    async for event in events:
                        if isinstance(event, sp.ErrorEvent):
                            raise failure_error(event.http_status, event.failure)
                        yield event
                        if isinstance(event, sp.ResultEvent):
                            return
        except Retry as r:  # 429/503 from the bridge: there is no other worker to try
            raise ComfyUnavailable(f"{r.reason}; retry shortly") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyUnavailable(f"the stream from the bridge at {self.url} broke ({type(exc).__name__})") from exc
        raise ComfyUnavailable(f"the bridge at {self.url} ended the stream without a result")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
