"""`comfy-worker provision --check` against the real ComfyUI install, in place (no copy).

--check is what an operator runs on a live machine to ask "does this match the
manifest?": the answer must be true, item by item, and asking must change nothing. The
install under COMFYUI_PATH is used as is, so these tests see whatever it is: a git
checkout, or (as on the CI box) an extracted tree without .git, where the commit cannot
be verified and the report must say so rather than claim a match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.real.launcher import comfy_python

COMFYUI_VERSION = "v0.3.64"
COMFYUI_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"
RES4LYF_COMMIT = "7750bf7800b6ad9d670308a09989fc0c04c40cec"
ABSENT_MODEL = "checkpoints/comfy_vast_worker_absent_model.safetensors"


def _manifest(path: Path, version: str = COMFYUI_VERSION) -> Path:
    path.write_text(f"""
[comfyui]
version = "{version}"
commit = "{COMFYUI_COMMIT}"

[[custom_nodes]]
name = "RES4LYF"
repo = "https://github.com/ClownsharkBatwing/RES4LYF"
ref = "{RES4LYF_COMMIT}"
pip = ["kornia"]
provides = ["ClownsharKSampler_Beta"]

[[models]]
url = "https://example.invalid/absent.safetensors"
dest = "{ABSENT_MODEL}"
sha256 = "{'0' * 64}"
size = 1234
""")
    return path


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime (bytecode caches aside: a
    ComfyUI running from this install may compile a lazily imported module meanwhile)."""
    out = {".": _stat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = _stat(p)
    return out


def _stat(p: Path) -> tuple[int, int, int]:
    st = p.lstat()
    return st.st_mode, st.st_size if not p.is_dir() else 0, st.st_mtime_ns


def _check(comfyui_path: Path, manifest: Path, cwd: Path) -> tuple[int, dict[str, Any], str]:
    cli = Path(sys.executable).with_name("comfy-worker")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "worker"]
    argv += ["provision", "--check", "--json", "--comfyui-path", str(comfyui_path),
             "--python", comfy_python(comfyui_path), "--manifest", str(manifest)]
    env = {k: v for k, v in os.environ.items() if k not in ("COMFY_WORKER_MODELS_DIR", "COMFYUI_PYTHON")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}") from None
    return done.returncode, report, done.stderr


@pytest.fixture(scope="module")
def comfyui_path() -> Path:
    return Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()


def _items(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(i["step"], i["name"]): i for i in report["items"]}


def test_check_reports_the_install_truthfully_and_changes_nothing(comfyui_path: Path, tmp_path: Path) -> None:
    before = _tree(comfyui_path)
    code, report, stderr = _check(comfyui_path, _manifest(tmp_path / "manifest.toml"), tmp_path)
    assert _tree(comfyui_path) == before, "provision --check changed the install"
    assert list(tmp_path.iterdir()) == [tmp_path / "manifest.toml"], "provision --check wrote in its cwd"

    items = _items(report)
    assert report["check_only"] is True
    assert set(items) == {("comfyui", COMFYUI_VERSION), ("custom_nodes", "RES4LYF"), ("models", ABSENT_MODEL)}
    is_git = (comfyui_path / ".git").exists()

    comfy = items[("comfyui", COMFYUI_VERSION)]
    assert comfy["status"] == "ok", comfy
    if is_git:
        assert comfy["detail"] == f"{COMFYUI_VERSION} at {COMFYUI_COMMIT[:12]}"
    else:  # comfyui_version.py matches; the commit is honestly not claimed
        assert "not a git checkout" in comfy["detail"] and "not verifiable" in comfy["detail"], comfy

    pack = items[("custom_nodes", "RES4LYF")]
    pack_dir = comfyui_path / "custom_nodes" / "RES4LYF"
    if not pack_dir.exists():
        assert pack["status"] == "missing", pack
    elif not (pack_dir / ".git").exists():
        # Present but unverifiable: reported as not_git (a failure), naming the pinned commit.
        assert pack["status"] == "not_git", pack
        assert RES4LYF_COMMIT[:12] in pack["detail"], pack
    else:
        assert pack["status"] in ("ok", "requirements_pending", "wrong_commit"), pack

    model = items[("models", ABSENT_MODEL)]
    assert model["status"] == "missing", model
    assert str(comfyui_path / "models" / ABSENT_MODEL) in model["detail"]

    # A missing model is a difference: exit 1, and the report says the machine differs.
    assert code == 1, stderr


def test_check_notices_a_version_the_install_is_not(comfyui_path: Path, tmp_path: Path) -> None:
    """The negative control: the same install against a manifest pinning another version."""
    before = _tree(comfyui_path)
    code, report, _ = _check(comfyui_path, _manifest(tmp_path / "manifest.toml", "v0.3.63"), tmp_path)
    assert _tree(comfyui_path) == before
    comfy = _items(report)[("comfyui", "v0.3.63")]
    if (comfyui_path / ".git").exists():
        # A git checkout is judged by its commit, which the manifest still pins correctly.
        assert comfy["status"] == "ok", comfy
    else:
        assert comfy["status"] == "wrong_version", comfy
        assert "0.3.64" in comfy["detail"] and "v0.3.63" in comfy["detail"], comfy
    assert code == 1
