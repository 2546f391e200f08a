"""`comfy-worker serve --local --deploy-file` and `python -m worker.emulator --deploy-file`
take the endpoint (name, max_queue_time) from deploy.toml, unset ${VAR} or not."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tests.deploy.conftest import REPO
from tests.worker.conftest import free_port, stop_process
from worker.deploy.config import local_endpoint_settings


def test_local_endpoint_settings_follow_the_overlay_without_needing_the_secrets(monkeypatch) -> None:
    for var in ("IMAGE_TAG", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert local_endpoint_settings(REPO / "deploy.toml") == ("comfy-worker", {"max_queue_time_s": 30.0})
    name, _ = local_endpoint_settings(REPO / "deploy.toml", "staging")
    assert name == "comfy-worker-staging"


async def _first_lines(cmd: list[str], until: str, tmp_path: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_WORKER_", "COMFY_BRIDGE_", "VAST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any(until in line for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
            assert raw, f"exited: {lines}"
            lines.append(raw.decode().strip())
    finally:
        await stop_process(proc)
    return lines


async def test_serve_local_takes_the_endpoint_from_deploy_toml(tmp_path: Path) -> None:
    f = tmp_path / "deploy.toml"
    f.write_text((REPO / "deploy.toml").read_text().replace("max_queue_time = 30 ", "max_queue_time = 12.5 "))
    lines = await _first_lines(
        [sys.executable, "-m", "worker", "serve", "--local", "--comfyui-url", "http://127.0.0.1:9",
         "--port", str(free_port()), "--router-port", str(free_port()), "--deploy-file", str(f),
         "--deploy-env", "local"], "router emulator:", tmp_path)
    assert f"endpoint 'comfy-worker-local' from {f}: max_queue_time 12.5 s" in lines
    assert any("(endpoint 'comfy-worker-local'" in line for line in lines if line.startswith("router emulator:"))


async def test_emulator_takes_the_endpoint_name_from_deploy_toml(tmp_path: Path) -> None:
    lines = await _first_lines(
        [sys.executable, "-m", "worker.emulator", "--port", str(free_port()), "--deploy-file",
         str(REPO / "deploy.toml"), "--env", "staging"], "local Vast", tmp_path)
    assert any("(endpoint 'comfy-worker-staging'" in line for line in lines)
