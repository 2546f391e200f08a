"""GracefulShutdown: a real process gets SIGTERM mid-request (the request completes, new
ones get 503 shutting_down, exit code 0), plus the drain/cleanup rules in process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_bridge.errors import ShuttingDown
from comfy_bridge.shutdown import GracefulShutdown

APP = Path(__file__).resolve().parent / "shutdown_app.py"


class AppProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.port = 0
        self.seen: list[str] = []

    async def expect(self, line: str, timeout: float = 15) -> str:
        async def read() -> str:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"app exited before printing {line!r}; saw {self.seen}")
                text = raw.decode().strip()
                self.seen.append(text)
                if text.startswith(line):
                    return text

        return await asyncio.wait_for(read(), timeout)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = await asyncio.wait_for(
            asyncio.gather(self.proc.stdout.read(), self.proc.stderr.read()), timeout
        )
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        return rc, "\n".join(self.seen) + out.decode(), err.decode()


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator:
    procs: list[asyncio.subprocess.Process] = []

    async def start(grace_s: float) -> AppProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(APP), str(grace_s), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        app = AppProcess(proc)
        app.port = int((await app.expect("PORT")).split()[1])
        return app

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(url) as r:
        return r.status, await r.json()


async def test_sigterm_drains_inflight_refuses_new_and_exits_0(start_app) -> None:
    app = await start_app(30)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(_get(s, app.url("/slow")))
        await app.expect("slow-started")
        app.proc.send_signal(signal.SIGTERM)
        await app.expect("draining")

        status, body = await _get(s, app.url("/fast"))
        assert status == 503
        assert body["id"] is None and body["status"] == "failed"
        assert body["error"]["type"] == "shutting_down" and body["error"]["retriable"] is True

        async with s.post(app.url("/_release")) as r:  # exempt path: still served
            assert r.status == 200
        assert await slow == (200, {"ok": "slow"})
    rc, out, _ = await app.finish()
    assert rc == 0
    assert "cleanup ran" in out


async def test_grace_expiry_still_cleans_up_and_exits_0(start_app) -> None:
    app = await start_app(0.3)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(_get(s, app.url("/slow")))
        await app.expect("slow-started")
        app.proc.send_signal(signal.SIGTERM)
        rc, out, err = await app.finish()
        with pytest.raises(aiohttp.ClientError):
            await slow  # cut off: the grace is over
    assert rc == 0
    assert "cleanup ran" in out
    assert "grace expired with 1 request" in err


async def test_second_signal_skips_the_rest_of_the_grace(start_app) -> None:
    app = await start_app(600)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(_get(s, app.url("/slow")))
        await app.expect("slow-started")
        app.proc.send_signal(signal.SIGTERM)
        await app.expect("draining")
        app.proc.send_signal(signal.SIGINT)
        rc, out, _ = await app.finish()
        with pytest.raises(aiohttp.ClientError):
            await slow
    assert rc == 0 and "cleanup ran" in out


async def test_middleware_counts_and_exempts() -> None:
    shutdown = GracefulShutdown(grace_s=5, exempt_paths=("/metrics",))
    entered, release = asyncio.Event(), asyncio.Event()

    async def work(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="m")

    app = web.Application(middlewares=[shutdown.middleware()])
    app.router.add_get("/work", work)
    app.router.add_get("/metrics", metrics)
    async with TestClient(TestServer(app)) as client:
        pending = asyncio.create_task(client.get("/work"))
        await entered.wait()
        assert shutdown.inflight == 1
        task = shutdown.begin("test")
        assert shutdown.begin("again") is task and not shutdown.accepting
        assert (await client.get("/work")).status == 503
        assert (await client.get("/metrics")).status == 200
        release.set()
        assert (await pending).status == 200
        assert await shutdown.wait() == 0
        assert shutdown.inflight == 0 and shutdown.left_unfinished == 0


async def test_track_refuses_once_stopping() -> None:
    shutdown = GracefulShutdown(grace_s=0)
    with shutdown.track():
        assert shutdown.inflight == 1
    shutdown.begin()
    with pytest.raises(ShuttingDown) as exc:
        with shutdown.track():
            pass
    assert exc.value.status == 503 and exc.value.retriable
    await shutdown.wait()


async def test_cleanups_run_last_first_and_survive_failures() -> None:
    shutdown = GracefulShutdown(grace_s=0, cleanup_timeout_s=0.2)
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    async def stuck() -> None:
        ran.append("stuck")
        await asyncio.Event().wait()

    shutdown.add_cleanup(first)
    shutdown.add_cleanup(broken)
    shutdown.add_cleanup(stuck)
    shutdown.begin()
    assert await shutdown.wait() == 0
    assert ran == ["stuck", "broken", "first"]


async def test_drains_run_after_inflight_and_before_cleanups() -> None:
    shutdown = GracefulShutdown(grace_s=5)
    ran: list[str] = []
    release = asyncio.Event()

    async def background() -> None:  # e.g. an S3 upload for a caller who left
        await release.wait()
        ran.append("drained")

    async def stop_comfyui() -> None:
        ran.append("cleanup")

    shutdown.add_drain(background)
    shutdown.add_cleanup(stop_comfyui)
    with shutdown.track():
        shutdown.begin()
        await asyncio.sleep(0)
        ran.append("request done")
    asyncio.get_running_loop().call_later(0.05, release.set)
    assert await shutdown.wait() == 0
    assert ran == ["request done", "drained", "cleanup"]


async def test_a_drain_past_the_grace_is_cut_off_and_cleanups_still_run() -> None:
    shutdown = GracefulShutdown(grace_s=0.1)
    ran: list[str] = []

    async def forever() -> None:
        await asyncio.Event().wait()

    async def stop_comfyui() -> None:
        ran.append("cleanup")

    shutdown.add_drain(forever, "uploads")
    shutdown.add_cleanup(stop_comfyui)
    shutdown.begin()
    assert await shutdown.wait() == 0
    assert ran == ["cleanup"] and shutdown.left_unfinished == 1
