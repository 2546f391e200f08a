"""The models step of provisioning, run while ComfyUI starts instead of before it.

Why: ComfyUI takes 12-13 s from process start to answering HTTP (../shared/FACTS.md)
and needs its code and custom nodes before it starts, but no model file until a prompt
runs. So start_server.sh provisions ComfyUI and its packs first (`provision
--skip-models`), and `comfy-worker serve --provision-models MANIFEST` verifies (or
downloads) the models in a child `comfy-worker provision --only models` while the
supervisor launches ComfyUI; the lifecycle (worker/lifecycle.py) waits for it before the
readiness check, so nothing is served, and no benchmark runs, before the models are
verified. A failure errors the worker with the step's last lines, which reach the
autoscaler.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.errors import ComfyUnrecoverable

log = logs.get(__name__)


class ModelsProvisioning:
    def __init__(self, manifest: Path, comfyui_path: Path) -> None:
        self.argv = [sys.executable, "-m", "worker", "provision", "--manifest", str(manifest),
                     "--comfyui-path", str(comfyui_path), "--only", "models"]
        self._task: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=15)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="provision-models")

    async def wait(self) -> None:
        """Until the models are verified; ComfyUnrecoverable if the step failed."""
        self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        proc = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self._tail.append(line)
                print(line, flush=True)  # the provisioning report, as start_server.sh showed it
            code = await proc.wait()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if code != 0:
            tail = "\n".join(self._tail)
            raise ComfyUnrecoverable(f"provisioning the models failed (exit {code}):\n{tail}"[-3000:])
        log.info("models provisioned while ComfyUI started")
