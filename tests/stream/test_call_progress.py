"""`comfy-worker call --progress`: a live progress bar on a terminal's stderr, nothing
drawn when stderr is a pipe; the result is saved and printed as without it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.worker.conftest import REPO, sd15_graph

pytestmark = pytest.mark.timeout(90)


async def _call(wf: Path, emulator, out: Path, stderr_fd: int | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "call", str(wf), "--progress", "--router", emulator.url,
        "--endpoint", "test-endpoint", "--api-key", "test-key", "--out", str(out),
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
        stderr=stderr_fd if stderr_fd is not None else asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, stdout, stderr or b""


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_progress_bar_on_a_terminal_and_quiet_on_a_pipe(start_worker, double, emulator, tmp_path):
    w = await start_worker(double)
    await w.wait_ready()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sd15_graph(steps=5)))

    master, slave = os.openpty()
    try:
        code, stdout, _ = await _call(wf, emulator, tmp_path / "out", stderr_fd=slave)
        os.close(slave)
        slave = -1
        drawn = (await asyncio.to_thread(_drain, master)).decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert code == 0, drawn
    assert json.loads(stdout)["status"] == "success"
    assert "queued:" in drawn and "node 3 (KSampler) step 5/5" in drawn
    assert "\r" in drawn and "done in" in drawn

    code, stdout, stderr = await _call(wf, emulator, tmp_path / "out2")
    assert code == 0 and json.loads(stdout)["status"] == "success"
    assert b"\r" not in stderr and b"KSampler" not in stderr
    assert list((tmp_path / "out2").iterdir())
