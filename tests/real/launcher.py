"""Start and stop a real ComfyUI for the real tier, without writing into its install.

Everything a run writes goes under one temporary base laid out like an install
(`output/`, `input/`, `temp/`, `user/`, `models/checkpoints/`), so the bridge can be given
that base as its `comfyui_path` and read outputs from disk exactly as in production.
Checkpoints are random-weight files in the real architectures, built once by
tools/make_checkpoints.py into a cache and linked into the base.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MAKE_CHECKPOINTS = REPO / "tools" / "make_checkpoints.py"

# File names the tool writes, and names templates use that the random files stand in for.
CHECKPOINTS = {"sd15": "sd15_random.safetensors", "sdxl": "sdxl_random.safetensors"}
ALIASES = {
    # random_sd15: the name in the recorded KSampler trace (tests/fixtures/comfyui-protocol).
    "sd15": ["v1-5-pruned-emaonly.safetensors", "random_sd15.safetensors"],
    "sdxl": ["sd_xl_base_1.0.safetensors"],
}
IMPORT_FAILED = re.compile(r"\(IMPORT FAILED\):\s*(.+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def comfy_python(comfyui_path: Path) -> str:
    """$COMFYUI_PYTHON, else a virtualenv beside main.py (comfy-cli's layout), else ours."""
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    for candidate in (".venv/bin/python", "venv/bin/python"):
        if (comfyui_path / candidate).exists():
            return str(comfyui_path / candidate)
    return sys.executable


def cache_dir() -> Path:
    return Path(
        os.environ.get("COMFYUI_TEST_CACHE") or Path.home() / ".cache" / "comfy-vast-worker"
    ).expanduser()


def ensure_checkpoints(python: str, comfyui_path: Path, archs: list[str]) -> dict[str, Path]:
    """Build the missing random checkpoints into the cache (once; a lock serialises builders)."""
    out = cache_dir() / "models" / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    wanted = {a: out / CHECKPOINTS[a] for a in archs}
    missing = [a for a, p in wanted.items() if not p.exists()]
    if missing:
        with open(out / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = [a for a, p in wanted.items() if not p.exists()]
            if missing:
                cmd = [python, str(MAKE_CHECKPOINTS), "--comfyui-path", str(comfyui_path),
                       "--out", str(out), "--arch", *missing]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"building checkpoints failed ({shlex.join(cmd)}):\n{done.stderr[-3000:]}"
                    )
    return wanted


@dataclass
class Layout:
    """The temporary base and the ComfyUI flags that point every folder at it."""

    base: Path

    def create(self, checkpoints: dict[str, Path]) -> "Layout":
        for sub in ("output", "input", "temp", "user", "models/checkpoints"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        ckpts = self.base / "models" / "checkpoints"
        for arch, target in checkpoints.items():
            for name in [target.name, *ALIASES.get(arch, [])]:
                link = ckpts / name
                if not link.exists():
                    link.symlink_to(target)
        self.models_yaml.write_text(
            json.dumps({"comfy_vast_worker_tests": {"checkpoints": str(ckpts)}}) + "\n"
        )  # JSON is YAML
        return self

    @property
    def models_yaml(self) -> Path:
        return self.base / "extra_model_paths.yaml"

    def flags(self) -> list[str]:
        return [
            "--output-directory", str(self.base / "output"),
            "--input-directory", str(self.base / "input"),
            "--temp-directory", str(self.base),  # ComfyUI appends "temp"
            "--user-directory", str(self.base / "user"),
            "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
            "--extra-model-paths-config", str(self.models_yaml),
        ]


@dataclass
class RealComfy:
    """A running ComfyUI: its URL, its folders, its log."""

    comfyui_path: Path
    python: str
    layout: Layout
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> Path:
        return self.layout.base

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def import_failures(self) -> list[str]:
        return [m.strip() for m in IMPORT_FAILED.findall(self.log_text())]

    def get_json(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.load(r)

    def post_json(self, path: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after 15 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def start(
    comfyui_path: Path,
    base: Path,
    *,
    archs: list[str],
    python: str | None = None,
    extra_args: list[str] | None = None,
    timeout_s: float = 240,
) -> RealComfy:
    """Build/link checkpoints, launch `main.py --cpu` on a free port, wait for /system_stats."""
    python = python or comfy_python(comfyui_path)
    checkpoints = ensure_checkpoints(python, comfyui_path, archs)
    layout = Layout(base).create(checkpoints)
    port = free_port()
    argv = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--disable-auto-launch", *layout.flags(), *(extra_args or [])]
    log_path = base / "comfyui.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=comfyui_path, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    comfy = RealComfy(comfyui_path, python, layout, port, proc, log_path, checkpoints)
    try:
        _wait_ready(comfy, started + timeout_s)
    except BaseException:
        comfy.stop()
        raise
    comfy.startup_s = time.monotonic() - started
    return comfy


def _wait_ready(comfy: RealComfy, deadline: float) -> None:
    while True:
        if comfy.proc.poll() is not None:
            raise RuntimeError(
                f"ComfyUI exited with {comfy.proc.returncode} before answering; last log lines:\n"
                + "\n".join(comfy.log_text().splitlines()[-30:])
            )
        try:
            comfy.get_json("/system_stats", timeout=5)
            return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                "ComfyUI did not answer /system_stats in time; last log lines:\n"
                + "\n".join(comfy.log_text().splitlines()[-30:])
            )
        time.sleep(0.25)
