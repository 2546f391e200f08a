"""Fixtures of the load test tests: the local stack of tests/worker/conftest.py (router
emulator and ComfyUI double in this process, the real PyWorker in a subprocess), a port
mapping in front of the worker that can answer a chosen call itself (as the framework
does with 429), a RunPod `/runsync` stand-in (runpod_standin.py), and `loadtest(...)`,
which runs the command in this event loop and reads back what it wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.support import free_port, save_graph
from tests.worker.conftest import double, emulator, start_worker  # noqa: F401  (fixtures)
from worker.cli import build_parser
from worker.loadtest.cli import run_async


@dataclass
class PortMap:
    """Vast's port mapping (public port -> WORKER_PORT), with scripted answers: the Nth
    POST /generate/sync (1-based) in `inject` gets that status with an empty body."""

    public_port: int
    worker_port: int = 0
    inject: dict[int, int] = field(default_factory=dict)
    calls: int = 0
    _session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path == "/generate/sync":
            self.calls += 1
            if self.calls in self.inject:
                return web.Response(status=self.inject[self.calls])
        assert self._session is not None
        async with self._session.request(request.method, f"http://127.0.0.1:{self.worker_port}{request.path_qs}",
                                         data=body, headers={"Content-Type": request.content_type}) as r:
            return web.Response(status=r.status, body=await r.read(),
                                headers={"Content-Type": r.headers.get("Content-Type", "application/json")})


@pytest.fixture
async def port_map() -> AsyncIterator[PortMap]:
    pm = PortMap(public_port=free_port())
    pm._session = aiohttp.ClientSession()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", pm.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", pm.public_port).start()
    yield pm
    await runner.cleanup()
    await pm._session.close()


@dataclass
class RunOutput:
    code: int
    out: Path
    records: list[dict[str, Any]]
    stats: dict[str, Any]
    meta: dict[str, Any]

    @property
    def report(self) -> str:
        return (self.out / "report.md").read_text()


def read_output(code: int, out: Path) -> RunOutput:
    lines = (out / "results.jsonl").read_text().splitlines() if (out / "results.jsonl").exists() else []
    return RunOutput(code, out, [json.loads(x) for x in lines if x.strip()],
                     json.loads((out / "stats.json").read_text()),
                     json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {})


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(save_graph(width=32, height=32)))
    return path


@pytest.fixture
def loadtest(tmp_path: Path) -> Callable[..., Awaitable[RunOutput]]:
    """`await loadtest("--target", ..., out="name")`: the command run in this loop."""

    async def run(*argv: str, out: str = "run") -> RunOutput:
        folder = tmp_path / out
        args = build_parser(["loadtest"]).parse_args(["loadtest", *argv, "--out", str(folder)])
        code = await run_async(args)
        return read_output(code, folder)

    return run
