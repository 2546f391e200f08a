"""The cold-start timeline: seconds from process start to the end of each start-up phase.

Why: a worker that is slow to become ready costs GPU time nobody is served with and
delays scaling; what is not measured cannot be shortened. Phases, in order:
provision (start_server.sh's provisioning, when it ran: COMFY_WORKER_T0 and
COMFY_WORKER_PROVISIONED_AT, epoch seconds it exports), comfyui_up (ComfyUI answers),
models_verified (the models step run while ComfyUI started, worker/provision_overlap.py),
ready_check (the classes, samplers and models the worker needs are there),
first_model_load (the warm-up generation, which loads the model), benchmark (max_perf
measured) and ready. The origin is COMFY_WORKER_T0 when set (the container's entrypoint
began), else this process's start from /proc. Each phase goes to /metrics
(`comfy_bridge_startup_seconds{phase}`, comfy_bridge/observability.py) as it ends, and
`log_ready` writes the one `ready` log line with the whole timeline.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from comfy_bridge import logs

log = logs.get(__name__)


def process_start_epoch() -> float:
    """When this process started (epoch seconds), from /proc; now when unreadable."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks since boot
        uptime = float(open("/proc/uptime").read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def _env_epoch(name: str) -> float | None:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


class Timeline:
    """`mark(phase)` as each phase ends; `on_mark(phase, seconds)` feeds /metrics."""

    def __init__(self, on_mark: Callable[[str, float], None] | None = None, origin: float | None = None) -> None:
        self.origin = origin or _env_epoch("COMFY_WORKER_T0") or process_start_epoch()
        self.on_mark = on_mark
        self.marks: dict[str, float] = {}
        self.details: dict[str, Any] = {}
        provisioned = _env_epoch("COMFY_WORKER_PROVISIONED_AT")
        if provisioned is not None and provisioned >= self.origin:
            self._set("provision", provisioned - self.origin)

    def mark(self, phase: str, **details: Any) -> float:
        seconds = time.time() - self.origin
        self._set(phase, seconds)
        self.details.update(details)
        return seconds

    def _set(self, phase: str, seconds: float) -> None:
        self.marks[phase] = round(seconds, 3)
        if self.on_mark is not None:
            self.on_mark(phase, seconds)

    def log_ready(self) -> None:
        """The one `ready` line: seconds since start per phase, and what the benchmark measured."""
        self.mark("ready")
        log.info("ready", extra={"fields": {"startup_s": dict(self.marks), **self.details}})
