"""The "instances" of the local control plane: one `comfy-worker serve` process per workergroup.

On Vast, a workergroup recruits machines that run the template's image. Here, so that
`comfy-worker deploy apply` then `comfy-worker call` works on a laptop, the control plane
(worker/emulator/control_plane.py) starts one local worker per workergroup, with the
environment Vast gives an instance (CONTAINER_ID, REPORT_ADDR pointing at the emulator,
PUBLIC_IPADDR, WORKER_PORT, VAST_TCP_PORT_<port>), the template's `-e` variables, and the
endpoint's max_queue_time, against the ComfyUI the emulator was told about. A new
template hash (or a rolling update) replaces the process; deleting the workergroup stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from comfy_bridge import logs

log = logs.get(__name__)

# The caller's own settings must not change what an "instance" runs.
_DROPPED_PREFIXES = ("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_", "S3_")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalInstance(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: int
    workergroup_id: int
    template_hash: str
    port: int
    log_path: Path
    proc: Any = None


class LocalWorkers:
    """Starts and stops worker processes; `root` holds each one's state and log."""

    def __init__(self, comfyui_url: str | None, report_addr: str, *, root: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.comfyui_url = comfyui_url
        self.report_addr = report_addr
        self.root = root or Path(tempfile.mkdtemp(prefix="comfy-vast-instances-"))
        self.extra_env = extra_env or {}
        self.instances: dict[int, LocalInstance] = {}

    async def start(self, instance_id: int, *, workergroup_id: int, template_hash: str,
                    template_env: dict[str, str], max_queue_time: float | None) -> LocalInstance | None:
        if not self.comfyui_url:
            log.info("no ComfyUI given to the emulator (--comfyui-url): the workergroup starts no worker")
            return None
        port = _free_port()
        cwd = self.root / f"instance-{instance_id}"
        cwd.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
        env.update(template_env)
        env.update({
            "CONTAINER_ID": str(instance_id), "REPORT_ADDR": self.report_addr, "PUBLIC_IPADDR": "127.0.0.1",
            "WORKER_PORT": str(port), f"VAST_TCP_PORT_{port}": str(port), "WORKER_HTTP_PORT": str(_free_port()),
            "UNSECURED": "false", "USE_SSL": "false", "PYTHONUNBUFFERED": "1",
            "COMFY_WORKER_STATE_DIR": str(cwd / "state"), "COMFY_BRIDGE_SPOOL_DIR": str(cwd / "spool"),
        })
        if max_queue_time:
            env["COMFY_WORKER_MAX_QUEUE_TIME_S"] = str(max_queue_time)
        env.update(self.extra_env)
        inst = LocalInstance(id=instance_id, workergroup_id=workergroup_id, template_hash=template_hash,
                             port=port, log_path=cwd / "worker.log")
        with open(inst.log_path, "ab") as fh:
            inst.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "serve", "--comfyui-url", self.comfyui_url, "--host", "127.0.0.1",
                cwd=str(cwd), env=env, stdout=fh, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        self.instances[instance_id] = inst
        log.info("local worker started", extra={"fields": {"instance": instance_id, "port": port,
                                                            "workergroup": workergroup_id, "log": str(inst.log_path)}})
        return inst

    def of_group(self, workergroup_id: int) -> list[LocalInstance]:
        return [i for i in self.instances.values() if i.workergroup_id == workergroup_id]

    async def stop(self, instance_id: int, grace_s: float = 15.0) -> None:
        inst = self.instances.pop(instance_id, None)
        if inst is None or inst.proc is None or inst.proc.returncode is not None:
            return
        try:
            os.killpg(inst.proc.pid, signal.SIGTERM)
            await asyncio.wait_for(inst.proc.wait(), grace_s)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            os.killpg(inst.proc.pid, signal.SIGKILL)
            await inst.proc.wait()
        log.info("local worker stopped", extra={"fields": {"instance": instance_id}})

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(i) for i in list(self.instances)))
