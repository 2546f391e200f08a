"""A tiny aiohttp app behind GracefulShutdown, run as a subprocess by test_shutdown.py.

`python shutdown_app.py GRACE_S` prints `PORT n`, then `slow-started` when GET /slow
begins (it waits for POST /_release), `draining` once shutdown began, `cleanup ran`
from its cleanup callback, and exits with what serve() returns.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.shutdown import GracefulShutdown, serve


async def main(grace_s: float) -> int:
    logs.setup("INFO")
    shutdown = GracefulShutdown(grace_s=grace_s, exempt_paths=("/_release",))
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        print("slow-started", flush=True)
        await release.wait()
        return web.json_response({"ok": "slow"})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"ok": "fast"})

    async def do_release(request: web.Request) -> web.Response:
        release.set()
        return web.json_response({"released": True})

    async def cleanup() -> None:
        print("cleanup ran", flush=True)

    async def announce() -> None:
        await shutdown.wait_stopping()
        print("draining", flush=True)

    app = web.Application(middlewares=[shutdown.middleware()])
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_post("/_release", do_release)
    shutdown.add_cleanup(cleanup)
    announcer = asyncio.create_task(announce())
    code = await serve(app, shutdown, port=0, on_started=lambda p: print(f"PORT {p}", flush=True))
    announcer.cancel()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(float(sys.argv[1]))))
