"""Download progress: a JSON log line per active file every few seconds, and a bar on a tty.

Shared by every file of one provision (comfy_bridge/provision/downloader.py), so the rate
and the bar are for the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any, TextIO

from comfy_bridge import logs

log = logs.get(__name__)


class Progress:
    """Aggregate progress: a JSON log line per active file every few seconds, and a bar on a tty."""

    def __init__(self, interval_s: float, bar: bool | None, stream: TextIO | None = None) -> None:
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.files: dict[str, list[int]] = {}  # dest -> [done, total]
        self.started = time.monotonic()
        self.fetched = 0
        self._task: asyncio.Task[None] | None = None
        self._last_bar = 0.0

    def start(self, dest: str, total: int, done: int) -> None:
        self.files[dest] = [done, total]

    def add(self, dest: str, n: int) -> None:
        self.files[dest][0] += n
        self.fetched += n
        if self.bar and time.monotonic() - self._last_bar > 0.2:
            self._draw()

    def finish(self, dest: str) -> None:
        self.files.pop(dest, None)

    def _rate(self) -> float:
        return self.fetched / max(time.monotonic() - self.started, 1e-6)

    def _draw(self) -> None:
        self._last_bar = time.monotonic()
        done = sum(d for d, _ in self.files.values())
        total = sum(t for _, t in self.files.values()) or 1
        width = 30
        filled = int(width * done / total)
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}% "
                f"{done / 1e9:.2f}/{total / 1e9:.2f} GB {self._rate() / 1e6:7.1f} MB/s "
                f"{len(self.files)} file(s)")
        with contextlib.suppress(Exception):
            self.stream.write(line)
            self.stream.flush()

    def log_now(self) -> None:
        rate = self._rate()
        for dest, (done, total) in list(self.files.items()):
            eta = (total - done) / rate if rate > 0 else None
            log.info("downloading %s: %.1f%% (%d/%d bytes), %.1f MB/s overall", dest,
                     100 * done / total, done, total, rate / 1e6,
                     extra={"fields": {"dest": dest, "done": done, "total": total,
                                       "mb_s": round(rate / 1e6, 2),
                                       "eta_s": round(eta) if eta is not None else None}})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.log_now()

    def __enter__(self) -> "Progress":
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
        if self.bar:
            with contextlib.suppress(Exception):
                self.stream.write("\n")
                self.stream.flush()
