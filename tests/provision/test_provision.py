"""`comfy-worker provision` end to end: ComfyUI, packs and models; twice; --check; volumes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from comfy_bridge.provision.manifest import load_manifest
from comfy_bridge.provision.provisioner import EXTRA_PATHS_FILE, Options, provision
from tests.provision.conftest import (
    REPO_ROOT,
    blob,
    commit_all,
    git,
    make_comfy_repo,
    make_pack_repo,
    model_entry,
    read_calls,
    stub_python,
    write_stub,
)

KIB = 1024


@pytest.fixture
def world(tmp_path, model_server, toml_manifest):
    """A ComfyUI checkout, two packs, two models on the local host, a stub ComfyUI python."""
    comfy_src, comfy_commit = make_comfy_repo(tmp_path / "src")
    a_repo, (a1, _) = make_pack_repo(tmp_path / "src", "PackA", ["NodeA"], requirements="numpy\n")
    b_repo, (_, b2) = make_pack_repo(tmp_path / "src", "PackB", ["NodeB"])
    models = {"ckpt.safetensors": blob(300 * KIB, 1), "lora.safetensors": blob(200 * KIB, 2)}
    model_server.files.update(models)
    manifest = toml_manifest(
        {"version": "v0.3.64", "commit": comfy_commit, "repo": str(comfy_src)},
        packs=[{"name": "PackA", "repo": str(a_repo), "ref": a1, "pip": ["kornia"], "provides": ["NodeA"]},
               {"name": "PackB", "repo": str(b_repo), "ref": b2, "provides": ["NodeB"]}],
        models=[model_entry(model_server, "ckpt.safetensors", models["ckpt.safetensors"],
                            "checkpoints/ckpt.safetensors"),
                model_entry(model_server, "lora.safetensors", models["lora.safetensors"], "loras/lora.safetensors")])
    comfy = tmp_path / "ComfyUI"
    git(tmp_path, "clone", "-q", str(comfy_src), str(comfy))
    py, calls = stub_python(tmp_path)
    return {"manifest": manifest, "comfy": comfy, "python": py, "calls": calls, "server": model_server,
            "models": models, "commit": comfy_commit, "tmp": tmp_path}


def options(world, **kw) -> Options:
    base = dict(comfyui_path=world["comfy"], python=str(world["python"]), gpu="cpu", min_chunk_bytes=64 * KIB)
    base.update(kw)
    return Options(**base)


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if ".git/" not in str(p) and p.is_file()}


async def test_provision_twice_changes_nothing_the_second_time(world):
    manifest = load_manifest(world["manifest"])

    first = await provision(manifest, options(world))

    assert first.ok, first.items
    assert {i.name: i.status for i in first.items} == {
        "v0.3.64": "ok", "PackA": "installed", "PackB": "installed",
        "checkpoints/ckpt.safetensors": "downloaded", "loras/lora.safetensors": "downloaded"}
    comfy = world["comfy"]
    assert (comfy / "models/loras/lora.safetensors").read_bytes() == world["models"]["lora.safetensors"]
    assert len(read_calls(world["calls"])) == 2  # pip for each pack
    requests, files = len(world["server"].records), snapshot(comfy)

    second = await provision(manifest, options(world))

    assert second.ok and [i.status for i in second.items] == ["ok"] * 5
    assert len(world["server"].records) == requests
    assert len(read_calls(world["calls"])) == 2
    assert snapshot(comfy) == files


async def test_check_reports_without_changing_anything(world):
    manifest = load_manifest(world["manifest"])
    before = snapshot(world["tmp"])

    report = await provision(manifest, options(world, check_only=True))

    assert not report.ok
    assert {i.name: i.status for i in report.items} == {
        "v0.3.64": "ok", "PackA": "missing", "PackB": "missing",
        "checkpoints/ckpt.safetensors": "missing", "loras/lora.safetensors": "missing"}
    assert snapshot(world["tmp"]) == before
    assert world["server"].records == [] and read_calls(world["calls"]) == []


async def test_models_on_a_volume_get_extra_model_paths(world):
    manifest = load_manifest(world["manifest"])
    volume = world["tmp"] / "volume/models"

    report = await provision(manifest, options(world, models_dir=volume))

    assert report.ok
    assert (volume / "checkpoints/ckpt.safetensors").exists()
    assert not (world["comfy"] / "models/checkpoints/ckpt.safetensors").exists()
    yaml = (world["comfy"] / EXTRA_PATHS_FILE).read_text()
    assert f"base_path: {volume}" in yaml and "    checkpoints: checkpoints/" in yaml and "loras: loras/" in yaml
    again = await provision(manifest, options(world, models_dir=volume))
    assert [i.status for i in again.items][-1] == "ok"


async def test_comfyui_at_another_commit_is_reported_then_moved(world):
    comfy_src = Path(load_manifest(world["manifest"]).comfyui.repo)
    (comfy_src / "NEWS.md").write_text("newer\n")
    commit_all(comfy_src, "newer")
    git(world["comfy"], "pull", "-q")
    manifest = load_manifest(world["manifest"])

    check = await provision(manifest, options(world, check_only=True, steps=("comfyui",)))
    assert check.items[0].status == "wrong_version"

    report = await provision(manifest, options(world, steps=("comfyui",)))
    assert report.items[0].status == "updated"
    assert git(world["comfy"], "rev-parse", "HEAD") == world["commit"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args, cwd=cwd or REPO_ROOT,
        env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_cli_provision_check_and_json(world):
    common = ["--manifest", str(world["manifest"]), "--comfyui-path", str(world["comfy"]),
              "--python", str(world["python"]), "--gpu", "cpu"]

    proc = await run_cli("provision", *common, "--check")
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert "PackA" in out.decode() and "missing" in out.decode() and "differs from the manifest" in out.decode()

    proc = await run_cli("provision", *common)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "everything matches the manifest" in out.decode()
    assert '"level": "info"' in err.decode()  # JSON logs on stderr

    proc = await run_cli("provision", *common, "--json")
    out, _ = await proc.communicate()
    report = json.loads(out)
    assert proc.returncode == 0 and {i["status"] for i in report["items"]} == {"ok"}


async def test_cli_reports_a_bad_manifest(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[comfyui]\nversion = "v0.3.64"\ncommit = "main"\n')
    proc = await run_cli("provision", "--manifest", str(bad), "--comfyui-path", str(tmp_path / "C"))
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "comfyui.commit: commit must be a commit hash" in err.decode()


async def test_absent_comfyui_is_installed_with_comfy_cli(world, tmp_path):
    """comfy-cli stands in as a stub on PATH that clones the --url at --commit, recording its argv."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "comfy-cli.jsonl"
    write_stub(stubs / "comfy", f"""
        import json, os, subprocess, sys
        argv = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps({{"argv": argv, "virtual_env": os.environ.get("VIRTUAL_ENV")}}) + "\\n")
        if "install" in argv:
            ws = argv[argv.index("--workspace") + 1]
            subprocess.run(["git", "clone", "-q", argv[argv.index("--url") + 1], ws], check=True)
            subprocess.run(["git", "-C", ws, "checkout", "-q", argv[argv.index("--commit") + 1]], check=True)
        """)
    target = tmp_path / "fresh/ComfyUI"
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "VIRTUAL_ENV": str(REPO_ROOT / ".venv")}

    proc = await run_cli("provision", "--manifest", str(world["manifest"]), "--comfyui-path", str(target),
                         "--only", "comfyui", "--gpu", "nvidia", "--cuda-version", "12.8", env=env)
    out, err = await proc.communicate()

    assert proc.returncode == 0, err.decode()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0]["argv"] == ["--skip-prompt", "tracking", "disable"]
    install = calls[1]["argv"]
    assert install[:4] == ["--skip-prompt", "--workspace", str(target), "install"]
    assert install[install.index("--commit") + 1] == world["commit"]
    assert install[install.index("--version") + 1] == "nightly"  # comfy-cli refuses --commit without it
    assert {"--skip-manager", "--nvidia"} <= set(install)
    assert install[install.index("--cuda-version") + 1] == "12.8"
    assert calls[1]["virtual_env"] is None  # never the worker's own venv
    assert "installed" in out.decode()
    assert git(target, "rev-parse", "HEAD") == world["commit"]
