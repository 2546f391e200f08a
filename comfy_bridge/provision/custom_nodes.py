"""Custom node packs at pinned commits, with their Python requirements in ComfyUI's environment.

Why: a pack at "whatever master is today" is how a worker that loaded yesterday fails
to import today (RES4LYF's newest commits need a newer ComfyUI). Each pack is a git
checkout of the manifest's commit, cloned into a temporary folder and renamed into
place so a crash never leaves half a pack; its requirements (plus the manifest's `pip`
extras for imports the pack forgot to list) are installed with ComfyUI's own Python, and
a stamp records what was installed so a rerun does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.errors import ProvisionFailed
from comfy_bridge.provision.json_records import read_record, write_record
from comfy_bridge.provision.manifest import CustomNodePack

log = logs.get(__name__)

STATE_FILE = ".comfy-worker-nodes.json"

PackStatus = Literal["ok", "installed", "updated", "missing", "wrong_commit", "not_git", "dirty",
                     "requirements_pending", "failed"]


class PackReport(BaseModel):
    name: str
    status: PackStatus
    detail: str = ""


class CommandFailed(Exception):
    def __init__(self, argv: list[str], code: int, output: str) -> None:
        super().__init__(f"{' '.join(argv[:3])}... exited {code}")
        self.argv, self.code, self.output = argv, code, output

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])


async def run_cmd(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                  timeout_s: float | None = None) -> str:
    """Run a command, return its combined output; CommandFailed (with the output) when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode or -1, text)
    return text


def _git_env() -> dict[str, str]:
    # Never wait on a credential prompt: a private repo without credentials fails fast.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}


async def git(*args: str, cwd: Path | None = None, timeout_s: float = 600) -> str:
    # safe.directory: checkouts on a volume or baked into an image may belong to another uid.
    argv = ["git", "-c", "safe.directory=*", *args]
    return (await run_cmd(argv, cwd=cwd, env=_git_env(), timeout_s=timeout_s)).strip()


async def head_commit(path: Path) -> str | None:
    """HEAD of a checkout, or None when `path` is not the top of a git checkout."""
    if not (path / ".git").exists():
        return None
    try:
        return await git("rev-parse", "HEAD", cwd=path, timeout_s=30)
    except CommandFailed:
        return None


async def _is_dirty(path: Path) -> bool:
    out = await git("status", "--porcelain", "--untracked-files=no", cwd=path, timeout_s=60)
    return bool(out)


async def _fetch_ref(path: Path, ref: str) -> None:
    """Get `ref` into the checkout: a shallow fetch of a full sha, else everything."""
    if len(ref) == 40:
        try:
            await git("fetch", "-q", "--depth", "1", "origin", ref, cwd=path)
            return
        except CommandFailed as exc:
            log.info("shallow fetch of %s refused (%s); fetching the whole history", ref[:12], exc.tail(1))
    await git("fetch", "-q", "--tags", "origin", cwd=path)


async def _checkout(path: Path, ref: str) -> str:
    await git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", ref, cwd=path)
    if (path / ".gitmodules").exists():
        await git("submodule", "update", "-q", "--init", "--recursive", cwd=path)
    return await git("rev-parse", "HEAD", cwd=path, timeout_s=30)


async def _clone(pack: CustomNodePack, dest: Path) -> str:
    # Cloned next to custom_nodes/, not in it: ComfyUI imports every folder in there.
    tmp = dest.parent.parent / ".comfy-worker-clones" / dest.name
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run
    tmp.mkdir(parents=True)
    try:
        await git("init", "-q", cwd=tmp)
        await git("remote", "add", "origin", pack.repo, cwd=tmp)
        await _fetch_ref(tmp, pack.ref)
        commit = await _checkout(tmp, pack.ref)
        os.replace(tmp, dest)
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()
        return commit
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def requirements_key(pack: CustomNodePack, path: Path, python: str) -> str:
    """What the installed requirements depend on: the pack's file, the extras, the interpreter."""
    h = hashlib.sha256()
    req = path / "requirements.txt"
    if pack.requirements and req.exists():
        h.update(req.read_bytes())
    h.update(json.dumps([pack.pip, pack.install_script, python]).encode())
    return h.hexdigest()[:16]


class NodeState:
    """Which pack requirements were installed, by key; lives next to the packs."""

    def __init__(self, custom_nodes_dir: Path) -> None:
        self.path = custom_nodes_dir / STATE_FILE
        self.data = read_record(self.path)

    def installed(self, name: str, commit: str, key: str) -> bool:
        return self.data.get(name) == {"commit": commit, "requirements": key}

    def record(self, name: str, commit: str, key: str) -> None:
        self.data[name] = {"commit": commit, "requirements": key}
        write_record(self.path, self.data)


# Packages a pack's requirements must never replace: ComfyUI's PyTorch build matches the
# machine's CUDA, and a pack asking for another torch would silently swap it.
_PROTECTED = ("torch", "torchvision", "torchaudio", "xformers")
_VERSIONS = ("import importlib.metadata as m, json, sys\n"
             "out = {}\n"
             "for n in sys.argv[1:]:\n"
             "    try: out[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps(out))")


async def _protect_constraints(python: str, folder: Path) -> list[str]:
    """`-c FILE` pinning the installed torch family, or nothing when none is installed."""
    try:
        found = json.loads(await run_cmd([python, "-c", _VERSIONS, *_PROTECTED], timeout_s=120))
    except (CommandFailed, ValueError, OSError):
        return []
    if not found:
        return []
    path = folder / "protected-constraints.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(found.items())))
    return ["-c", str(path)]


async def _install_requirements(pack: CustomNodePack, path: Path, python: str) -> None:
    pip = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q"]
    req = path / "requirements.txt"
    args: list[str] = []
    if pack.requirements and req.exists():
        args += ["-r", str(req)]
    args += list(pack.pip)
    if args:
        log.info("installing requirements of %s: %s", pack.name, " ".join(a for a in args if a != "-r"))
        with tempfile.TemporaryDirectory(prefix="comfy-worker-pip-") as tmp:
            args += await _protect_constraints(python, Path(tmp))
            await run_cmd(pip + args, cwd=path, timeout_s=3600)
    if pack.install_script and (path / "install.py").exists():
        log.info("running install.py of %s", pack.name)
        await run_cmd([python, "install.py"], cwd=path, timeout_s=3600)


async def ensure_pack(pack: CustomNodePack, custom_nodes_dir: Path, python: str, state: NodeState, *,
                      check_only: bool = False) -> PackReport:
    """One pack at its pinned commit with requirements installed (or, with check_only, what is off)."""
    dest = custom_nodes_dir / pack.name
    status: PackStatus = "ok"
    commit = await head_commit(dest)
    if not dest.exists():
        if check_only:
            return PackReport(name=pack.name, status="missing", detail=f"{dest} absent")
        log.info("cloning %s at %s", pack.name, pack.ref[:12])
        commit = await _clone(pack, dest)
        status = "installed"
    elif commit is None:
        fix = ("its commit cannot be verified against the manifest" if check_only else
               "remove it so provision can clone it")
        return PackReport(name=pack.name, status="not_git",
                          detail=f"{dest} is present but not a git checkout: {fix} (pinned {pack.ref[:12]})")
    elif not commit.startswith(pack.ref):
        if check_only:
            return PackReport(name=pack.name, status="wrong_commit",
                              detail=f"at {commit[:12]}, manifest pins {pack.ref[:12]}")
        if await _is_dirty(dest):
            return PackReport(name=pack.name, status="dirty",
                              detail=f"{dest} has local changes and is at {commit[:12]}, not {pack.ref[:12]}: "
                                     "commit or discard them, or remove the folder")
        log.info("moving %s from %s to %s", pack.name, commit[:12], pack.ref[:12])
        await git("remote", "set-url", "origin", pack.repo, cwd=dest)
        await _fetch_ref(dest, pack.ref)
        commit = await _checkout(dest, pack.ref)
        status = "updated"
    if not commit.startswith(pack.ref):
        return PackReport(name=pack.name, status="failed",
                          detail=f"checked out {commit[:12]}, expected {pack.ref[:12]}")

    key = requirements_key(pack, dest, python)
    if state.installed(pack.name, commit, key):
        return PackReport(name=pack.name, status=status, detail=f"at {commit[:12]}")
    if check_only:
        return PackReport(name=pack.name, status="requirements_pending",
                          detail=f"at {commit[:12]}, requirements not installed with {python}")
    await _install_requirements(pack, dest, python)
    state.record(pack.name, commit, key)
    return PackReport(name=pack.name, status="installed" if status == "ok" else status,
                      detail=f"at {commit[:12]}, requirements installed")


async def ensure_packs(packs: list[CustomNodePack], custom_nodes_dir: Path, python: str, *,
                       check_only: bool = False) -> list[PackReport]:
    """Every pack in manifest order (pip installs into one environment must not race)."""
    if not check_only:
        custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    state = NodeState(custom_nodes_dir)
    reports: list[PackReport] = []
    for pack in packs:
        try:
            report = await ensure_pack(pack, custom_nodes_dir, python, state, check_only=check_only)
        except CommandFailed as exc:
            report = PackReport(name=pack.name, status="failed",
                                detail=f"`{' '.join(exc.argv[:4])}` exited {exc.code}:\n{exc.tail()}")
        except FileNotFoundError as exc:
            report = PackReport(name=pack.name, status="failed", detail=f"cannot run {exc.filename}: {exc}")
        if report.status in ("failed", "not_git", "dirty"):
            log.error("custom node pack %s: %s", pack.name, report.detail)
        elif report.status != "ok":
            log.info("custom node pack %s: %s (%s)", pack.name, report.status, report.detail)
        reports.append(report)
    return reports


def raise_for(reports: list[PackReport]) -> None:
    bad = [r for r in reports if r.status in ("failed", "not_git", "dirty")]
    if bad:
        raise ProvisionFailed("custom node packs not provisioned: " +
                              "; ".join(f"{r.name}: {r.detail}" for r in bad),
                              packs=[r.model_dump() for r in bad])
