"""What every benchmark here needs: ports, process start/stop, RSS, percentiles.

The scripts run as `python bench/NAME.py` (or `./dev.sh bench NAME`), so this module is
imported by its bare name from the scripts' own folder.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc), NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation, so small samples stay honest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def wait_ready(session: aiohttp.ClientSession, url: str, procs: list[subprocess.Popen],
                     timeout: float = 60) -> None:
    """Poll `url` until 200, failing fast if one of `procs` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args} exited with {p.returncode}")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout}s")


async def wait_line(stream: asyncio.StreamReader, needle: str, timeout: float) -> list[str]:
    """Read a child's output until a line contains `needle`; the lines read so far."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not raw:
            raise RuntimeError(f"process exited before printing {needle!r}: {lines[-10:]}")
        lines.append(raw.decode(errors="replace").rstrip())
        if needle in lines[-1]:
            return lines


async def stop(proc: asyncio.subprocess.Process, grace_s: float = 20) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace_s`."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), grace_s)
    except (ProcessLookupError, asyncio.TimeoutError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
