"""ComfyUI's output as the supervisor keeps it: a size-capped log file, a tail, import failures.

`LogSink` appends the child's stdout+stderr to a file capped at `max_bytes` (one rotated
copy `<name>.1`), keeps the last lines in memory to name the cause when ComfyUI gives up,
and notes the node modules that failed to import (`IMPORT FAILED` lines). Used by
comfy_bridge/comfyui/supervisor.py.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

from comfy_bridge import logs

log = logs.get(__name__)

# ComfyUI's two shapes of an import failure (see tests/reliability/fixtures/comfyui-startup.log):
#   "IMPORT FAILED: nodes_audio.py"                                   (comfy_extras)
#   "   0.4 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/RES4LYF" (custom node packs)
_IMPORT_FAILED = re.compile(r"(?:^IMPORT FAILED:\s*|\(IMPORT FAILED\):\s*)(?P<what>\S.*?)\s*$")
_CANNOT_IMPORT = re.compile(r"^Cannot import (?P<what>.+?) module for custom nodes: (?P<err>.*)$")


def note_import_failure(line: str, failures: list[str], errors: dict[str, str]) -> None:
    """Add what one log line says failed to import: its name to `failures` (once, in log
    order), its error to `errors` (`{module path: error}`, e.g. "No module named 'kornia'")."""
    m = _IMPORT_FAILED.search(line.rstrip())
    if m and m.group("what") not in failures:
        failures.append(m.group("what"))
    m = _CANNOT_IMPORT.match(line.strip())
    if m:
        errors[m.group("what")] = m.group("err")


def parse_import_failures(lines: Sequence[str]) -> list[str]:
    """Paths/names of node modules ComfyUI failed to import, in log order, without repeats."""
    failures: list[str] = []
    for line in lines:
        note_import_failure(line, failures, {})
    return failures


class LogSink:
    """Append-only log file capped at `max_bytes` (one rotated copy `<name>.1`), plus a tail."""

    def __init__(self, path: Path, max_bytes: int, tail_lines: int = 200) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.import_failures: list[str] = []
        self.import_errors: dict[str, str] = {}
        self._partial = b""
        self._fh: Any = None

    def open(self, banner: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the child
        self.tail.clear()
        self.import_failures.clear()
        self.import_errors.clear()
        self._partial = b""
        self.write(f"\n=== {banner} ===\n".encode())

    def write(self, data: bytes) -> None:
        # Small synchronous appends: ComfyUI logs a few hundred bytes per prompt, so a thread
        # hop would cost more than the write.
        if self._fh is None:
            return
        try:
            self._fh.write(data)
            if self._fh.tell() > self.max_bytes:
                self._rotate()
        except OSError as exc:  # a full disk must not take the worker down
            log.warning("cannot write ComfyUI log %s: %s", self.path, exc)
        self._scan(data)

    def _rotate(self) -> None:
        self._fh.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def _scan(self, data: bytes) -> None:
        chunks = re.split(rb"[\r\n]", self._partial + data)
        self._partial = chunks.pop()[-8192:]
        for raw in chunks:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.tail.append(line)
            note_import_failure(line, self.import_failures, self.import_errors)

    def close(self) -> None:
        if self._partial:
            self._scan(b"\n")
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
