"""ComfyUI itself at the manifest's version, installed with comfy-cli when absent.

comfy-cli does what a team would otherwise script by hand (clone, checkout, PyTorch for
the right GPU, requirements) and runs without prompts (`--skip-prompt`) with its usage
tracking turned off. It installs into ComfyUI's own virtual environment
(`<ComfyUI>/.venv`), never into the worker's, whose pins (pillow, cryptography from the
PyWorker framework) would otherwise fight ComfyUI's.

An existing install is checked, not rebuilt: a git checkout must be at the pinned
commit (a clean one is moved there), an install without git must report the pinned
version in comfyui_version.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.errors import ProvisionFailed
from comfy_bridge.provision.custom_nodes import CommandFailed, git, head_commit, run_cmd
from comfy_bridge.provision.manifest import ComfyUISpec

log = logs.get(__name__)

Gpu = Literal["nvidia", "cpu", "amd"]
ComfyStatus = Literal["ok", "installed", "updated", "missing", "wrong_version", "failed"]


class ComfyReport(BaseModel):
    status: ComfyStatus
    detail: str = ""
    python: str = ""


def comfyui_python(comfyui_path: Path, explicit: str | None = None) -> str:
    """ComfyUI's interpreter: the flag, COMFYUI_PYTHON, the install's own venv, or this one."""
    if explicit:
        return explicit
    if env := os.environ.get("COMFYUI_PYTHON"):
        return env
    for venv in (".venv", "venv"):
        candidate = comfyui_path / venv / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return sys.executable


def installed_version(comfyui_path: Path) -> str | None:
    try:
        text = (comfyui_path / "comfyui_version.py").read_text()
    except OSError:
        return None
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return m.group(1) if m else None


def comfy_cli() -> str | None:
    """comfy-cli's executable: next to this interpreter (the worker's venv) or on PATH."""
    beside = Path(sys.executable).with_name("comfy")
    return str(beside) if beside.exists() else shutil.which("comfy")


async def check_comfyui(spec: ComfyUISpec, path: Path, python: str | None = None) -> ComfyReport:
    py = comfyui_python(path, python)
    if not (path / "main.py").exists():
        return ComfyReport(status="missing", detail=f"no ComfyUI at {path}", python=py)
    commit = await head_commit(path)
    if commit is not None:
        if commit.startswith(spec.commit):
            return ComfyReport(status="ok", detail=f"{spec.version} at {commit[:12]}", python=py)
        return ComfyReport(status="wrong_version", detail=f"at {commit[:12]}, manifest pins {spec.commit[:12]}",
                           python=py)
    version = installed_version(path)
    if version == spec.bare_version:
        return ComfyReport(status="ok", detail=f"{spec.version} (not a git checkout: commit not verifiable)",
                           python=py)
    return ComfyReport(status="wrong_version", detail=f"version {version or 'unknown'}, manifest pins {spec.version}",
                       python=py)


def install_argv(spec: ComfyUISpec, path: Path, gpu: Gpu, cuda_version: str | None) -> list[str]:
    cli = comfy_cli()
    if cli is None:
        raise ProvisionFailed("comfy-cli is not installed: pip install 'comfy-vast-worker[provision]' "
                              "(or comfy-cli) into the worker's environment")
    # comfy-cli accepts --commit only with an explicit --version nightly (checked against 1.23).
    argv = [cli, "--skip-prompt", "--workspace", str(path), "install", "--url", spec.repo,
            "--version", "nightly", "--commit", spec.commit, "--skip-manager", f"--{gpu}"]
    if gpu == "nvidia" and cuda_version:
        argv += ["--cuda-version", cuda_version]
    return argv


def _cli_env(python: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # comfy-cli installs into $VIRTUAL_ENV when set; the worker's venv must never be it.
    env.pop("VIRTUAL_ENV", None)
    if python:
        env["VIRTUAL_ENV"] = str(Path(python).parent.parent)
    return env


async def ensure_comfyui(spec: ComfyUISpec, path: Path, *, python: str | None = None, gpu: Gpu = "nvidia",
                         cuda_version: str | None = None, check_only: bool = False) -> ComfyReport:
    report = await check_comfyui(spec, path, python)
    if check_only or report.status == "ok":
        return report
    try:
        if report.status == "missing":
            if path.exists() and any(path.iterdir()):
                raise ProvisionFailed(f"{path} exists and is not empty but holds no ComfyUI (no main.py): "
                                      "remove it or point --comfyui-path elsewhere")
            env = _cli_env(python)
            cli = install_argv(spec, path, gpu, cuda_version)
            await run_cmd([cli[0], "--skip-prompt", "tracking", "disable"], env=env, timeout_s=120)
            log.info("installing ComfyUI %s (%s) into %s with comfy-cli", spec.version, spec.commit[:12], path)
            await run_cmd(cli, env=env, timeout_s=3600)
            after = await check_comfyui(spec, path, python)
            if after.status != "ok":
                raise ProvisionFailed(f"comfy-cli installed ComfyUI but it is {after.detail}")
            return after.model_copy(update={"status": "installed"})
        # wrong version: move a clean git checkout; never touch anything else
        commit = await head_commit(path)
        if commit is None:
            raise ProvisionFailed(f"ComfyUI at {path} is {report.detail} and is not a git checkout, so "
                                  "provision will not change it: reinstall it or point --comfyui-path elsewhere")
        if await git("status", "--porcelain", "--untracked-files=no", cwd=path):
            raise ProvisionFailed(f"ComfyUI at {path} is {report.detail} and has local changes: "
                                  "commit or discard them first")
        log.warning("moving ComfyUI at %s from %s to %s", path, commit[:12], spec.commit[:12])
        try:
            await git("fetch", "-q", "--depth", "1", "origin", spec.commit, cwd=path)
        except CommandFailed:
            await git("fetch", "-q", "--tags", "origin", cwd=path)
        await git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", spec.commit, cwd=path)
        py = comfyui_python(path, python)
        await run_cmd([py, "-m", "pip", "install", "--no-input", "-q", "-r", "requirements.txt"], cwd=path,
                      timeout_s=3600)
        after = await check_comfyui(spec, path, python)
        return after.model_copy(update={"status": "updated" if after.status == "ok" else "failed"})
    except CommandFailed as exc:
        raise ProvisionFailed(f"installing ComfyUI failed: `{' '.join(exc.argv[:5])}...` exited {exc.code}:\n"
                              f"{exc.tail()}") from None
