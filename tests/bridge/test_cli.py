"""`comfy-worker bridge` starts, answers, and stops cleanly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import free_port, save_graph


async def test_cli_bridge_serves_requests(double, tmp_path):
    port = free_port()
    exe = Path(sys.executable).parent / "comfy-worker"
    proc = subprocess.Popen(
        [str(exe), "bridge", "--comfyui-url", double.url, "--comfyui-path", str(double.root),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # up to 30 s on a loaded 2-core box
                assert proc.poll() is None, proc.communicate()
                try:
                    async with session.get(url + "/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with session.post(url + "/generate/sync", json={"input": {"workflow_json": save_graph()}}) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["output"][0]["mimetype"] == "image/png"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
