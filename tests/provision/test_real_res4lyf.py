"""Real tier: provision RES4LYF from a local clone into a real ComfyUI and find its nodes.

Runs only when COMFYUI_PATH points at a real install (with torch in COMFYUI_PYTHON, or
the install's .venv). The install is copied to a temporary folder without its custom
nodes, so it is never modified; ComfyUI's environment is not touched either: pip runs
in an overlay venv that sees the real one's packages through a .pth file. RES4LYF comes
from a local git repository made from a tree of commit 7750bf7 (RES4LYF_SRC, or
/work/rt/RES4LYF, or the install's own custom_nodes/RES4LYF), since CI has no GitHub.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from comfy_bridge.provision.comfyui_install import installed_version
from comfy_bridge.provision.manifest import load_manifest
from comfy_bridge.provision.verify import startup_check
from tests.provision.conftest import REPO_ROOT, commit_all, git

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = [
    pytest.mark.real,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "main.py").exists(),
                       reason="real tier: set COMFYUI_PATH to a ComfyUI install"),
]
# Big example folders the nodes do not need to load.
_SKIP = shutil.ignore_patterns("__pycache__", ".git", "workflows", "example_workflows", "*.png", "*.jpg", "*.webp")


def _comfy_python(comfy: Path) -> str:
    for candidate in (os.environ.get("COMFYUI_PYTHON"), comfy / ".venv/bin/python", comfy / "venv/bin/python",
                      "/work/rt/cvenv/bin/python"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("no Python with ComfyUI's requirements: set COMFYUI_PYTHON")


def _res4lyf_tree(comfy: Path) -> Path:
    for candidate in (os.environ.get("RES4LYF_SRC"), "/work/rt/RES4LYF", comfy / "custom_nodes/RES4LYF"):
        if candidate and (Path(candidate) / "__init__.py").exists():
            return Path(candidate)
    pytest.skip("no RES4LYF source tree: set RES4LYF_SRC")


def _overlay_venv(base_python: str, dest: Path) -> str:
    """A venv of the same interpreter that sees `base_python`'s packages but installs into itself."""
    base_prefix = subprocess.run([base_python, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    site = subprocess.run([base_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    interpreter = Path(base_prefix) / "bin" / Path(os.path.realpath(base_python)).name
    subprocess.run([str(interpreter), "-m", "venv", str(dest)], check=True, timeout=300)
    py = dest / "bin/python"
    own_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(own_site) / "comfyui-base.pth").write_text(site + "\n")
    return str(py)


@pytest.fixture
async def comfy_server(tmp_path) -> AsyncIterator[dict]:
    src = Path(COMFYUI_PATH or "")
    comfy = tmp_path / "ComfyUI"
    shutil.copytree(src, comfy, ignore=shutil.ignore_patterns("__pycache__", "custom_nodes", "output", "input",
                                                                "temp", "user", ".venv", "venv"), symlinks=True)
    (comfy / "custom_nodes").mkdir()
    pack_src = tmp_path / "RES4LYF-src"
    shutil.copytree(_res4lyf_tree(src), pack_src, ignore=_SKIP)
    git(pack_src, "init", "-q", "-b", "main")
    ref = commit_all(pack_src, "RES4LYF 7750bf7 tree")
    python = _overlay_venv(_comfy_python(src), tmp_path / "overlay")

    version = installed_version(comfy) or "0.3.64"
    commit = "a125cd84b054a57729b5eecab930ca9408719832"
    if (src / ".git").exists():
        commit = git(src, "rev-parse", "HEAD")
    manifest = tmp_path / "manifest.toml"
    default = load_manifest()
    res4lyf = default.custom_nodes[0]
    manifest.write_text("\n".join([
        "[comfyui]", f'version = "v{version}"', f'commit = "{commit}"', "",
        "[[custom_nodes]]", 'name = "RES4LYF"', f'repo = "{pack_src}"', f'ref = "{ref}"',
        # The pack's requirements.txt asks for opencv-python; a headless server (and this
        # environment) has opencv-python-headless, so the manifest lists what to install.
        "requirements = false",
        f"pip = {json.dumps(['opencv-python-headless', 'matplotlib', 'pywavelets', 'numpy', *res4lyf.pip])}",
        f"provides = {json.dumps(res4lyf.provides)}",
        f"samplers = {json.dumps(res4lyf.samplers)}", f"schedulers = {json.dumps(res4lyf.schedulers)}", ""]))

    # Everything is already in the environment: no network, and no dependency walk (this
    # machine's torch was installed without the CUDA wheels it declares).
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1"}
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "provision", "--manifest", str(manifest), "--comfyui-path", str(comfy),
        "--python", python, "--only", "comfyui,custom_nodes", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await done.communicate()
    assert done.returncode == 0, out.decode()[-4000:]
    assert git(comfy / "custom_nodes/RES4LYF", "rev-parse", "HEAD") == ref

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "comfyui.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        cwd=comfy, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1200):  # bounded: up to ~4 minutes on 2 slow cores
                if proc.returncode is not None:
                    raise AssertionError((tmp_path / "comfyui.log").read_text()[-4000:])
                try:
                    async with session.get(f"{url}/system_stats") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("ComfyUI did not answer:\n" + (tmp_path / "comfyui.log").read_text()[-4000:])
        yield {"url": url, "manifest": manifest, "comfy": comfy, "log": tmp_path / "comfyui.log", "out": out}
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def test_res4lyf_provisioned_from_a_local_clone_loads_in_real_comfyui(comfy_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{comfy_server['url']}/object_info") as r:
            info = await r.json()
    assert "ClownsharKSampler_Beta" in info, comfy_server["log"].read_text()[-3000:]
    failed = [line for line in comfy_server["log"].read_text().splitlines() if "IMPORT FAILED" in line]
    assert not [line for line in failed if "RES4LYF" in line], failed

    report = await startup_check(comfy_server["url"], load_manifest(comfy_server["manifest"]), object_info=info)
    assert report.ok, report.message

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "check-workflow", str(REPO_ROOT / "workflows/sdxl_res4lyf_t2i.json"),
        "--comfyui-url", comfy_server["url"], cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    text = out.decode()
    assert "missing class" not in text, text  # every class of the RES4LYF template is there
    assert proc.returncode in (0, 1) and ("OK" in text or "missing model" in text), text
