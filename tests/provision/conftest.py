"""Fixtures of the provision tests: a local model host, local git repositories, stubs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.provision.model_server import ModelServer

REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_pack_repo(root: Path, name: str, classes: list[str], requirements: str = "") -> tuple[Path, list[str]]:
    """A tiny custom node pack as a local git repo with two commits; returns (path, [sha1, sha2])."""
    repo = root / f"{name}.git-src"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    mappings = ", ".join(f'"{c}": _Node' for c in classes)
    (repo / "__init__.py").write_text(textwrap.dedent(f"""\
        class _Node:
            @classmethod
            def INPUT_TYPES(cls):
                return {{"required": {{}}}}
            RETURN_TYPES = ()
            FUNCTION = "run"
            OUTPUT_NODE = True
            CATEGORY = "test"
            def run(self):
                return ()

        NODE_CLASS_MAPPINGS = {{{mappings}}}
        """))
    (repo / "requirements.txt").write_text(requirements)
    first = commit_all(repo, "first")
    (repo / "README.md").write_text(f"{name}\n")
    second = commit_all(repo, "second")
    return repo, [first, second]


def make_comfy_repo(root: Path, version: str = "0.3.64") -> tuple[Path, str]:
    """A stand-in for the ComfyUI repository: main.py, comfyui_version.py, models/."""
    repo = root / "ComfyUI-src"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "master")
    (repo / "main.py").write_text("print('not really ComfyUI')\n")
    (repo / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (repo / "requirements.txt").write_text("")
    (repo / "custom_nodes").mkdir()
    (repo / "custom_nodes" / "example_node.py.example").write_text("")
    (repo / "models" / "checkpoints").mkdir(parents=True)
    (repo / "models" / "checkpoints" / "put_checkpoints_here").write_text("")
    return repo, commit_all(repo, "comfy")


def write_stub(path: Path, body: str) -> Path:
    """An executable Python script (this interpreter) that logs its argv as JSON lines."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def stub_python(root: Path, *, fail: bool = False) -> tuple[Path, Path]:
    """A fake ComfyUI interpreter with torch 2.5.1 "installed": records `-m pip install` calls
    (with the constraints file's content) and answers the installed-versions probe."""
    log = root / "python-calls.jsonl"
    exe = write_stub(root / "fake-python", f"""
        import json, os, sys
        argv = sys.argv[1:]
        if argv[:1] == ["-c"]:
            print(json.dumps({{"torch": "2.5.1+cu124"}}))
            sys.exit(0)
        record = {{"argv": argv, "cwd": os.getcwd()}}
        if "-c" in argv:
            record["constraints"] = open(argv[argv.index("-c") + 1]).read()
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(record) + "\\n")
        if {fail!r}:
            print("ERROR: No matching distribution found for nonexistent-package")
            sys.exit(1)
        """)
    return exe, log


def read_calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (so chunk mix-ups change the hash)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def model_entry(server: ModelServer, name: str, data: bytes, dest: str, **extra: Any) -> dict[str, Any]:
    return {"url": server.file_url(name), "dest": dest, "sha256": sha256(data), "size": len(data), **extra}


@pytest.fixture
async def model_server() -> AsyncIterator[ModelServer]:
    server = ModelServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def toml_manifest(tmp_path) -> Callable[..., Path]:
    """Write a manifest from Python values: comfyui dict, packs, models, benchmark."""

    def q(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(q(x) for x in v) + "]"
        return json.dumps(v)

    def write(comfyui: dict[str, Any], packs: list[dict[str, Any]] = (), models: list[dict[str, Any]] = (),
              name: str = "manifest.toml", extra: str = "") -> Path:
        parts = ["[comfyui]", *(f"{k} = {q(v)}" for k, v in comfyui.items()), ""]
        for p in packs:
            parts += ["[[custom_nodes]]", *(f"{k} = {q(v)}" for k, v in p.items()), ""]
        for m in models:
            parts += ["[[models]]", *(f"{k} = {q(v)}" for k, v in m.items()), ""]
        path = tmp_path / name
        path.write_text("\n".join(parts) + extra)
        return path

    return write
