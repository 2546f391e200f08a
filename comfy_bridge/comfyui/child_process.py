"""ComfyUI's process tree: how it is launched, signalled and taken down.

`ChildProcessGroup` is the process half of comfy_bridge/comfyui/supervisor.py's
`ComfySupervisor`: the command line (`--cpu` when no accelerator is visible), an
environment without the worker's secrets, a child in its own session/process group so
the whole tree can be killed, and exit noticed through the subprocess protocol's
`process_exited` callback, which fires as soon as the child is reaped (`Process.wait()`
would also wait for the pipes, which a grandchild can hold open).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from comfy_bridge import logs
from comfy_bridge.comfyui.child_log import LogSink

log = logs.get(__name__)

# Environment variables of ours that ComfyUI and its custom nodes have no business reading.
_PRIVATE_ENV_PREFIXES = ("S3_", "COMFY_BRIDGE_WEBHOOK_SECRET", "MASTER_TOKEN", "WORKER_AUTH")

def has_gpu() -> bool:
    """Whether an accelerator device node is visible (decides ComfyUI's `--cpu`)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Feeds output to the supervisor and resolves `exited` the moment the child is reaped."""

    def __init__(self, on_output: Callable[[bytes], None], exited: asyncio.Future[None]) -> None:
        self._on_output = on_output
        self._exited = exited

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._on_output(data)

    def process_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)


class ChildProcessGroup:
    """Launch and stop ComfyUI's process group; mixed into `ComfySupervisor`, whose
    __init__ sets the attributes below."""

    comfyui_path: Path
    host: str
    port: int
    port_wait_s: float
    _argv: list[str]
    _env: dict[str, str]
    _sink: LogSink
    _kick: asyncio.Event
    _restart_requested: str | None
    _last_exit_code: int | None
    _transport: asyncio.SubprocessTransport | None
    _exited: asyncio.Future[None] | None

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport else None

    def _build_argv(
        self,
        python: str | None,
        command: Sequence[str] | None,
        cpu: bool | None,
        extra_args: Sequence[str],
    ) -> list[str]:
        if command is not None:
            base = list(command)
        else:
            base = [python or self._find_python(), "main.py"]
        argv = base + ["--listen", self.host, "--port", str(self.port), "--disable-auto-launch"]
        if (not has_gpu()) if cpu is None else cpu:
            argv.append("--cpu")
        return argv + list(extra_args)

    def _find_python(self) -> str:
        # comfy-cli installs ComfyUI with its own virtualenv beside main.py.
        for candidate in (".venv/bin/python", "venv/bin/python"):
            p = self.comfyui_path / candidate
            if p.exists():
                return str(p)
        return sys.executable

    @staticmethod
    def _child_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        self._close_transport()
        self._sink.close()
        self._sink.open(
            f"comfy-supervisor: launch at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
            f"{shlex.join(self._argv)}"
        )
        self._exited = loop.create_future()
        self._kick.clear()
        self._restart_requested = None
        transport, _ = await loop.subprocess_exec(
            lambda: _ChildProtocol(self._sink.write, self._exited),  # type: ignore[arg-type]
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.comfyui_path),
            env=self._env,
            start_new_session=True,  # own process group: stop() kills the whole tree
        )
        self._transport = transport
        log.info("launched ComfyUI pid %s: %s", transport.get_pid(), shlex.join(self._argv))

    async def _port_frees(self) -> bool:
        """True once nothing accepts connections on host:port (waits up to port_wait_s)."""
        deadline = time.monotonic() + self.port_wait_s
        while True:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 1.0
                )
            except (OSError, asyncio.TimeoutError):
                return True
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    def _signal_group(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def _kill_group(self, sig: signal.Signals) -> None:
        self._signal_group(sig)
        if self._exited is not None:
            await self._exited

    async def _terminate(self, grace_s: float) -> None:
        if self._transport is None or self._exited is None:
            self._sink.close()
            return
        if not self._exited.done():
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), grace_s)
            except asyncio.TimeoutError:
                log.warning("ComfyUI ignored SIGTERM for %ss; killing it", grace_s)
                await self._kill_group(signal.SIGKILL)
        self._last_exit_code = self._transport.get_returncode()
        self._signal_group(signal.SIGKILL)
        self._close_transport()
        self._sink.close()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
