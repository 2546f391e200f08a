"""Graceful shutdown on SIGTERM: stop accepting, drain, clean up, exit 0.

Why: Vast stops a worker with SIGTERM when it scales down or replaces it. A worker that
dies on the spot loses the images being made; one that keeps accepting makes callers
wait for nothing. So on the first signal new requests get 503 `shutting_down`
(retriable: the autoscaler routes the retry to another worker), requests already
running get `grace_s` to finish, then the registered drains get what is left of it
(work no handler waits for: requests whose caller left but whose S3 upload or webhook is
still wanted, webhooks of answered requests), then the registered cleanups run (stop
ComfyUI, close sessions) and the process exits 0. A second signal skips what is left of
the grace.

    shutdown = GracefulShutdown(grace_s=settings.shutdown_grace_s)
    app = web.Application(middlewares=[shutdown.middleware()])
    shutdown.add_drain(app[RUNNER_KEY].drain)   # comfy_bridge/app.py
    shutdown.add_cleanup(supervisor.stop)
    sys.exit(asyncio.run(serve(app, shutdown, host=..., port=...)))

Code that does not run inside an aiohttp handler guarded by the middleware (the
PyWorker's own routes) can use `with shutdown.track(): ...` and `shutdown.install()`,
then `await shutdown.wait()` beside its server task.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any, Awaitable, Callable, Collection, Iterator

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.errors import ShuttingDown

log = logs.get(__name__)

Cleanup = Callable[[], Awaitable[Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def failure_body(error: ShuttingDown) -> dict[str, Any]:
    """The request contract's failure shape for a request refused before it had an id."""
    return {"id": None, "status": "failed", "error": error.to_dict()}


class GracefulShutdown:
    """Owns the "accepting" flag, the in-flight count and the cleanup stack of a process."""

    def __init__(
        self,
        grace_s: float = 30.0,
        *,
        exempt_paths: Collection[str] = ("/metrics", "/health", "/ready"),
        cleanup_timeout_s: float = 30.0,
    ) -> None:
        self.grace_s = grace_s
        self.exempt_paths = frozenset(exempt_paths)
        self.cleanup_timeout_s = cleanup_timeout_s
        self._accepting = True
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()
        self._done = asyncio.Event()
        self._cleanups: list[tuple[str, Cleanup]] = []
        self._drains: list[tuple[str, Cleanup]] = []
        self._task: asyncio.Task[None] | None = None
        self._installed: list[signal.Signals] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._middleware: Any = None
        self.exit_code = 0
        self.left_unfinished = 0

    # ---- state ----------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopping(self) -> None:
        """Return once shutdown has begun (new requests are refused from then on)."""
        await self._stopping.wait()

    async def wait(self) -> int:
        """Return the exit code once shutdown has drained and cleaned up."""
        await self._done.wait()
        return self.exit_code

    # ---- in-flight tracking ---------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a request as in flight; ShuttingDown (503, retriable) once not accepting."""
        if not self._accepting:
            raise ShuttingDown("the worker is shutting down; retry on another worker")
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def middleware(self) -> Any:
        """aiohttp middleware: 503 JSON while shutting down, in-flight count otherwise.
        Paths in `exempt_paths` (metrics, health) are neither refused nor counted."""
        if self._middleware is not None:
            return self._middleware

        @web.middleware
        async def graceful_shutdown(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in self.exempt_paths:
                return await handler(request)
            try:
                with self.track():
                    return await handler(request)
            except ShuttingDown as err:
                return web.json_response(failure_body(err), status=err.status)

        self._middleware = graceful_shutdown
        return graceful_shutdown

    # ---- cleanup and signals --------------------------------------------------------

    def add_drain(self, cb: Cleanup, name: str | None = None) -> None:
        """Await `cb()` once in-flight requests are done, before any cleanup, within what
        is left of the grace: background work that still needs ComfyUI or the network."""
        self._drains.append((name or getattr(cb, "__qualname__", repr(cb)), cb))

    def add_cleanup(self, cb: Cleanup, name: str | None = None) -> None:
        """Run `await cb()` after draining; cleanups run last-added first, like a stack."""
        self._cleanups.append((name or getattr(cb, "__qualname__", repr(cb)), cb))

    def install(self, signals: Collection[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Handle `signals` on the running loop: the first begins shutdown, the next forces it."""
        self._loop = asyncio.get_running_loop()
        for sig in signals:
            s = signal.Signals(sig)
            self._loop.add_signal_handler(s, self._on_signal, s)
            self._installed.append(s)

    def uninstall(self) -> None:
        if self._loop is None:
            return
        for sig in self._installed:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._task is None:
            self.begin(f"got {sig.name}")
        else:
            log.warning("got %s again: skipping the rest of the drain", sig.name)
            self._force.set()

    def begin(self, reason: str = "requested") -> asyncio.Task[None]:
        """Start shutting down (idempotent); returns the task that drains and cleans up."""
        if self._task is None:
            self._accepting = False
            self._stopping.set()
            self._task = asyncio.get_running_loop().create_task(
                self._run(reason), name="graceful-shutdown"
            )
        return self._task

    def force(self) -> None:
        """Stop waiting for in-flight requests."""
        self._force.set()

    async def wait_drained(self, timeout: float | None) -> bool:
        """True when nothing is in flight, False if `timeout` (or force()) came first."""
        idle = asyncio.ensure_future(self._idle.wait())
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait({idle, force}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            force.cancel()
        return self._inflight == 0

    async def _run(self, reason: str) -> None:
        started = time.monotonic()
        log.info(
            "shutting down (%s): refusing new requests, draining %d in flight within %gs",
            reason, self._inflight, self.grace_s,
        )
        try:
            if not await self.wait_drained(self.grace_s):
                self.left_unfinished = self._inflight
                log.warning(
                    "shutdown grace expired with %d request(s) in flight; they will be cut off",
                    self._inflight,
                )
            else:
                log.info("drained in %.2fs", time.monotonic() - started)
            await self._run_drains(started)
            for name, cb in reversed(self._cleanups):
                try:
                    await asyncio.wait_for(cb(), self.cleanup_timeout_s)
                except asyncio.TimeoutError:
                    log.error("cleanup %s took over %gs; skipped", name, self.cleanup_timeout_s)
                except Exception:
                    log.exception("cleanup %s failed", name)
            log.info("shutdown complete in %.2fs", time.monotonic() - started)
        finally:
            self._done.set()


    async def _run_drains(self, started: float) -> None:
        """Each drain, in the order added, until the grace runs out or force()."""
        for name, cb in self._drains:
            remaining = max(0.0, self.grace_s - (time.monotonic() - started))
            work = asyncio.ensure_future(cb())
            force = asyncio.ensure_future(self._force.wait())
            try:
                await asyncio.wait({work, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                force.cancel()
            if not work.done():
                work.cancel()
                log.warning("shutdown grace expired while draining %s; the rest is cut off", name)
                self.left_unfinished += 1
            elif not work.cancelled() and work.exception() is not None:
                log.error("drain %s failed: %r", name, work.exception())


async def serve(
    app: web.Application,
    shutdown: GracefulShutdown,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_started: Callable[[int], Any] | None = None,
    handler_cancellation: bool = False,
    install_signals: bool = True,
    shutdown_timeout_s: float = 0.5,
) -> int:
    """Serve `app` until `shutdown` completes; return the exit code (0).

    Adds the shutdown middleware when the app lacks it, and calls `on_started(port)` with
    the bound port (useful with port 0)."""
    middleware = shutdown.middleware()
    if middleware not in app.middlewares:
        app.middlewares.append(middleware)
    if install_signals:
        shutdown.install()
    # The drain already waited for handlers; aiohttp's own wait only covers stragglers.
    runner = web.AppRunner(
        app, handler_cancellation=handler_cancellation, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=shutdown_timeout_s)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("listening on %s:%s", host, bound)
        if on_started is not None:
            on_started(bound)
        return await shutdown.wait()
    finally:
        shutdown.uninstall()
        await runner.cleanup()
