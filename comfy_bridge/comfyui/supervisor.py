"""ComfyUI as a supervised child process: launch, probe, restart with backoff, give up.

Why: a worker whose ComfyUI crashed must not keep answering "ready"; it must fail the
requests in flight at once (503, retriable), restart ComfyUI, and after K crashes in M
seconds say it is unrecoverable so the autoscaler replaces the machine.

This module owns the state machine: readiness is GET /system_stats answering 200, never
a log line; liveness probes while ready; crashes counted in a window; restarts with
backoff. The process tree (launch, signals, exit noticed the moment the child is reaped)
is comfy_bridge/comfyui/child_process.py's; its output (a size-capped log file, the last
lines that name the cause when ComfyUI gives up, `IMPORT FAILED` lines) is
comfy_bridge/comfyui/child_log.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import shlex
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

from comfy_bridge import logs
from comfy_bridge.comfyui import gc_freeze as gc_freeze_pack
from comfy_bridge.comfyui.child_log import LogSink
from comfy_bridge.comfyui.child_process import ChildProcessGroup
from comfy_bridge.errors import ComfyUnavailable, ComfyUnrecoverable

log = logs.get(__name__)

State = Literal["stopped", "starting", "ready", "restarting", "failed"]
Listener = Callable[[str, str], "Awaitable[None] | None"]

class ComfySupervisor(ChildProcessGroup):
    """Runs ComfyUI from `comfyui_path` and keeps it running, or says why it cannot.

    States: "stopped" -> "starting" -> "ready" <-> "restarting"; "failed" is final (K
    crashes within `crash_window_s`, a start that never answers, or `mark_fatal`). Every
    change is passed to listeners as `(state, reason)`.
    """

    def __init__(
        self,
        comfyui_path: Path,
        *,
        python: str | None = None,
        host: str = "127.0.0.1",
        port: int = 18188,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        max_crashes: int = 3,
        crash_window_s: float = 600,
        backoff_s: Sequence[float] = (1, 2, 5, 10, 30),
        probe_interval_s: float = 0.5,
        start_timeout_s: float = 300,
        command: Sequence[str] | None = None,
        cpu: bool | None = None,
        env: Mapping[str, str] | None = None,
        max_log_bytes: int = 50 * 1024 * 1024,
        probe_timeout_s: float = 10.0,
        liveness_interval_s: float = 10.0,
        liveness_failures: int = 3,
        port_wait_s: float = 5.0,
        gc_freeze: bool | None = None,
    ) -> None:
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.comfyui_path = Path(comfyui_path)
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else self.comfyui_path / "comfyui.log"
        self.max_crashes = max_crashes
        self.crash_window_s = crash_window_s
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.probe_interval_s = probe_interval_s
        self.start_timeout_s = start_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.liveness_interval_s = liveness_interval_s
        self.liveness_failures = max(1, liveness_failures)
        self.port_wait_s = port_wait_s
        # The gc.freeze pack (comfy_bridge/comfyui/gc_freeze.py) goes to a real ComfyUI
        # (main.py) unless switched off; a stand-in `command` gets it only when asked.
        if gc_freeze if gc_freeze is not None else command is None:
            extra_args = [*extra_args, *gc_freeze_pack.launch_args(self.log_path.parent)]
        self._argv = self._build_argv(python, command, cpu, extra_args)
        self._env = dict(env) if env is not None else self._child_env()
        self._sink = LogSink(self.log_path, max_log_bytes)

        self._state: State = "stopped"
        self._reason = ""
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._listener_tasks: set[asyncio.Task[Any]] = set()
        self._crashes: collections.deque[float] = collections.deque()
        self._restarts = 0
        self._last_exit_code: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._exited: asyncio.Future[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._restart_requested: str | None = None
        self._kick = asyncio.Event()

    # ---- public surface -------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "ComfySupervisor":
        """Build from BridgeSettings: host/port from `comfyui_url`, the rest from comfyui_*."""
        if settings.comfyui_path is None:
            raise ValueError("comfyui_path is not set: nothing to supervise")
        url = urlsplit(settings.comfyui_url)
        kwargs: dict[str, Any] = {
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 8188,
            "log_path": settings.comfyui_log_path,
            "extra_args": shlex.split(settings.comfyui_extra_args),
            "max_crashes": settings.comfyui_max_crashes,
            "crash_window_s": settings.comfyui_crash_window_s,
            "start_timeout_s": settings.comfyui_start_timeout_s,
            "gc_freeze": settings.comfyui_gc_freeze,
        }
        kwargs.update(overrides)
        return cls(settings.comfyui_path, **kwargs)

    @property
    def state(self) -> State:
        return self._state

    @property
    def reason(self) -> str:
        """Why the last state change happened; for "failed", what to tell the autoscaler."""
        return self._reason

    @property
    def failure_reason(self) -> str | None:
        return self._reason if self._state == "failed" else None

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def last_exit_code(self) -> int | None:
        return self._last_exit_code

    @property
    def argv(self) -> list[str]:
        return list(self._argv)

    def add_listener(self, cb: Listener) -> None:
        """`cb(state, reason)` on every state change; may be sync or async."""
        self._listeners.append(cb)

    def import_failures(self) -> list[str]:
        """Node modules that failed to import in the current (or last) ComfyUI run."""
        return list(self._sink.import_failures)

    def import_errors(self) -> dict[str, str]:
        """`{module path: error}` for the same failures, e.g. "No module named 'kornia'"."""
        return dict(self._sink.import_errors)

    def log_tail(self, n: int = 20) -> list[str]:
        return list(self._sink.tail)[-n:]

    def check_available(self) -> None:
        """Raise the error a request should get when ComfyUI is not ready right now."""
        if self._state == "ready":
            return
        if self._state == "failed":
            raise ComfyUnrecoverable(self._public_reason())
        raise ComfyUnavailable(f"ComfyUI is {self._state}; retry shortly", state=self._state)

    async def start(self) -> None:
        """Launch ComfyUI and return once it answers; ComfyUnrecoverable if it never does."""
        if self._task is not None and not self._task.done():
            await self.wait_ready(None)
            return
        if self._state == "failed":
            raise ComfyUnrecoverable(self._public_reason())
        self._crashes.clear()
        self._restart_requested = None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s)
        )
        self._set_state("starting", "launching ComfyUI")
        self._task = asyncio.create_task(self._lifecycle(), name="comfyui-supervisor")
        await self.wait_ready(None)

    async def wait_ready(self, timeout: float | None) -> None:
        """Return when ComfyUI is ready; ComfyUnrecoverable if it failed, ComfyUnavailable
        if it is stopped or not ready within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._state == "ready":
                return
            if self._state == "failed":
                raise ComfyUnrecoverable(self._public_reason())
            if self._state == "stopped":
                raise ComfyUnavailable("ComfyUI is stopped", state="stopped")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ComfyUnavailable(
                    f"ComfyUI not ready after {timeout:g}s (state {self._state})", state=self._state
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_unavailable(self) -> str:
        """Return the new state as soon as ComfyUI leaves "ready" (to fail in-flight work fast)."""
        while self._state == "ready":
            await self._changed.wait()
        return self._state

    def mark_fatal(self, reason: str) -> None:
        """ComfyUI's GPU context is broken (device-side assert, illegal memory access):
        restarting the process on this host will not help, so fail now and for good."""
        if self._state in ("failed", "stopped"):
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        log.error("ComfyUI marked unrecoverable: %s", reason)
        self._set_state("failed", reason)

    async def restart(self, reason: str) -> None:
        """Kill a ComfyUI that is alive but frozen (comfy_bridge/jobs/watchdog.py saw it fail
        probe after probe, never merely slow); it is restarted like after a crash and, being
        a freeze, counts towards the crash limit."""
        if self._state != "ready" or self._transport is None:
            return
        log.warning("restarting ComfyUI: %s", reason)
        self._restart_requested = reason
        self._kick.set()
        await self.wait_unavailable()

    async def stop(self, grace_s: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`, release everything."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._terminate(grace_s)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._listener_tasks:
            await asyncio.gather(*list(self._listener_tasks), return_exceptions=True)
        if self._state != "stopped":
            # A failed supervisor stays "failed" so the reason is still reported.
            if self._state != "failed":
                self._set_state("stopped", "stopped")

    # ---- internals ------------------------------------------------------------------

    def _public_reason(self) -> str:
        return logs.redact(self._reason or "ComfyUI failed")

    def _set_state(self, state: State, reason: str) -> None:
        self._state, self._reason = state, reason
        log.info(
            "ComfyUI state %s", state,
            extra={"fields": {"comfyui_state": state, "reason": logs.redact(reason)[:2000],
                              "restarts": self._restarts}},
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for cb in list(self._listeners):
            try:
                result = cb(state, reason)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_done)
            except Exception:
                log.exception("supervisor listener failed")

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervisor listener failed: %r", task.exception())

    async def _lifecycle(self) -> None:
        try:
            while True:
                if not await self._port_frees():
                    # Something else answers there (a ComfyUI left from an earlier run?):
                    # probing it would report a child that is not ours as ready.
                    self._fail(
                        f"port {self.port} on {self.host} is already in use by another process; "
                        "cannot launch ComfyUI there"
                    )
                    return
                try:
                    await self._launch()
                except OSError as exc:
                    self._fail(f"cannot launch ComfyUI ({shlex.join(self._argv)}): {exc}")
                    return
                outcome = await self._await_ready()
                if outcome == "timeout":
                    self._fail(await self._reap(outcome))
                    return
                if outcome == "ready":
                    self._set_state("ready", "ComfyUI answers at " + self.url)
                    outcome = await self._watch()
                cause = await self._reap(outcome)
                now = time.monotonic()
                self._crashes.append(now)
                while self._crashes and now - self._crashes[0] > self.crash_window_s:
                    self._crashes.popleft()
                if len(self._crashes) >= self.max_crashes:
                    self._fail(
                        f"ComfyUI crashed {len(self._crashes)} times within "
                        f"{self.crash_window_s:g}s; last: {cause}"
                    )
                    return
                delay = self.backoff_s[min(len(self._crashes), len(self.backoff_s)) - 1]
                self._set_state(
                    "restarting",
                    f"{cause}; crash {len(self._crashes)} within {self.crash_window_s:g}s "
                    f"(gives up at {self.max_crashes}); restarting in {delay:g}s",
                )
                await asyncio.sleep(delay)
                self._restarts += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave listeners believing it is fine
            log.exception("ComfyUI supervisor crashed")
            self._fail(f"supervisor error: {exc!r}")

    def _fail(self, why: str) -> None:
        # The cause first, then as much of the log tail as fits an autoscaler error_msg.
        tail = "\n".join(line[:300] for line in self.log_tail(15))[-3000:]
        reason = f"{why}\nlast ComfyUI log lines ({self.log_path}):\n{tail}" if tail else why
        self._set_state("failed", logs.redact(reason))

    async def _probe(self, timeout: float) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(
                self.url + "/system_stats", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _await_ready(self) -> str:
        """"ready", "exited" or "timeout"; polls /system_stats, wakes at once on exit."""
        assert self._exited is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._exited.done():
                return "exited"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            probe = asyncio.ensure_future(self._probe(min(self.probe_timeout_s, remaining)))
            await asyncio.wait({probe, self._exited}, return_when=asyncio.FIRST_COMPLETED)
            if self._exited.done():
                probe.cancel()
                return "exited"
            if probe.result():
                return "ready"
            await asyncio.wait({self._exited}, timeout=min(self.probe_interval_s, max(remaining, 0)))

    async def _watch(self) -> str:
        """While ready: return "exited" when the child dies, "hung" after repeated failed
        liveness probes, "restart" when `restart()` asked for it."""
        assert self._exited is not None
        failures = 0
        kick = asyncio.ensure_future(self._kick.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {self._exited, kick}, timeout=self.liveness_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if self._exited.done():
                    return "exited"
                if kick.done():
                    return "restart"
                probe = asyncio.ensure_future(self._probe(self.probe_timeout_s))
                await asyncio.wait({probe, self._exited, kick}, return_when=asyncio.FIRST_COMPLETED)
                if not probe.done():
                    probe.cancel()
                    continue
                failures = 0 if probe.result() else failures + 1
                if failures >= self.liveness_failures:
                    return "hung"
        finally:
            kick.cancel()

    async def _reap(self, outcome: str) -> str:
        """Make sure the old process tree is gone; describe why it went."""
        if outcome == "timeout":
            cause = (f"ComfyUI did not answer GET /system_stats within "
                     f"{self.start_timeout_s:g}s of starting; killed")
        elif outcome == "hung":
            cause = (f"ComfyUI stopped answering GET /system_stats "
                     f"({self.liveness_failures} probes failed); killed")
        elif outcome == "restart":
            cause = f"ComfyUI restarted on request: {self._restart_requested}"
        else:
            cause = ""
        if outcome != "exited":
            await self._kill_group(signal.SIGKILL)
        assert self._transport is not None and self._exited is not None
        await self._exited
        code = self._transport.get_returncode()
        self._last_exit_code = code
        # Stragglers the child left behind (its own subprocesses) must not hold the port.
        self._signal_group(signal.SIGKILL)
        self._close_transport()
        self._sink.close()
        if not cause:
            cause = f"ComfyUI exited with code {code}"
            if code is not None and code < 0:
                with contextlib.suppress(ValueError):
                    cause += f" ({signal.Signals(-code).name})"
        log.warning(cause, extra={"fields": {"exit_code": code}})
        return cause
