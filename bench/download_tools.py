"""bench/download_tools.py: the same file fetched by our downloader, aria2c and huggingface_hub.

Imported by bench/provision.py. Each runner downloads one manifest entry into a folder and
returns the seconds it took; `safety()` checks on a local host (tests/provision/model_server.py)
the three properties provisioning relies on, for each tool:
- the token reaches only the manifest's host, not the host it redirects to (a CDN);
- a wrong sha256 leaves nothing at the final name (ComfyUI would load it);
- a download cut midway (the tool's own retries off where it has a switch) continues from
  what is on disk when run again: the bytes fetched beyond the file's size say how much.

aria2c is Debian's `aria2` package; huggingface_hub is not a dependency of this project
(`pip install huggingface_hub` into .venv to include it). Without Hugging Face's Xet storage
(its CAS servers cannot be run locally), huggingface_hub fetches over plain HTTP, one
connection per file: that is the path measured here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

from comfy_bridge.errors import DownloadFailed
from comfy_bridge.provision.downloader import DownloadOptions, ensure_models
from comfy_bridge.provision.manifest import ModelFile
from tests.provision.model_server import Fault, ModelServer

TOKEN = "bench-secret-token"
DEST = "checkpoints/model.bin"
Runner = Callable[[ModelFile, Path, int, str | None, bool], Awaitable[None]]


async def ours(model: ModelFile, folder: Path, connections: int, token: str | None, retry: bool = True) -> None:
    opts = DownloadOptions(connections=connections, parallel_files=1, min_chunk_bytes=1 << 20, bar=False,
                           progress_interval_s=3600, retries=5 if retry else 0,
                           env={"HF_TOKEN": token} if token else {})
    await ensure_models([model], folder, opts)


async def aria2c(model: ModelFile, folder: Path, connections: int, token: str | None, retry: bool = True) -> None:
    """`aria2c -x N -s N --continue --checksum=sha-256=...`, pieces of 1 MiB (ours' bench chunk floor)."""
    final = folder / model.dest
    args = [f"-x{connections}", f"-s{connections}", "-k1M", "--continue=true", f"--checksum=sha-256={model.sha256}",
            "--file-allocation=none", "--console-log-level=error", "--summary-interval=0", "--download-result=hide",
            "--auto-file-renaming=false", "-d", str(final.parent), "-o", final.name, model.url]
    if token:
        args.insert(0, f"--header=Authorization: Bearer {token}")
    if not retry:
        args.insert(0, "--max-tries=1")
    proc = await asyncio.create_subprocess_exec("aria2c", *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    if await proc.wait():
        raise DownloadFailed(f"aria2c exited {proc.returncode}", dest=model.dest)


def hub_available() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


async def hub(model: ModelFile, folder: Path, connections: int, token: str | None, retry: bool = True) -> None:
    """hf_hub_download against the host's Hugging Face-shaped path (one connection, whatever N is;
    it always retries a cut stream itself)."""
    endpoint, _, name = model.url.partition("/f/")
    os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    from huggingface_hub import hf_hub_download

    got = await asyncio.to_thread(hf_hub_download, "bench/model", name, revision="main", endpoint=endpoint,
                                  cache_dir=folder / ".hub", local_dir=folder / ".hub-files", token=token or False)
    (folder / model.dest).parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, folder / model.dest)


def tools(connections: int) -> list[tuple[str, Runner, int]]:
    """(label, runner, connections) for every tool installed here."""
    out: list[tuple[str, Runner, int]] = [("ours, 1 connection", ours, 1),
                                          (f"ours, {connections} connections", ours, connections)]
    if shutil.which("aria2c"):
        out.append((f"aria2c -x {connections}", aria2c, connections))
    if hub_available():
        out.append(("huggingface_hub (plain HTTP)", hub, 1))
    return out


async def timed(run: Runner, model: ModelFile, connections: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        await run(model, Path(tmp), connections, None, True)
        took = time.perf_counter() - began
        got = hashlib.sha256((Path(tmp) / model.dest).read_bytes()).hexdigest()
        assert got == model.sha256, f"{run.__name__} wrote a file with sha256 {got}"
        return took


async def _token_check(server: ModelServer, run: Runner, n: int, data: bytes) -> str:
    server.records.clear()
    server.redirects["gated.bin"] = server.file_url("blob.bin", alt=True)  # another host name
    redirected = ModelFile(url=server.file_url("gated.bin"), dest=DEST, sha256=hashlib.sha256(data).hexdigest(),
                           size=len(data), auth="hf")
    with tempfile.TemporaryDirectory() as tmp:
        await run(redirected, Path(tmp), n, TOKEN, True)
    cdn = [r for r in server.records if r.host == "localhost"]
    leaked = sum(1 for r in cdn if r.authorization)
    return f"sent on {leaked} of {len(cdn)} requests" if leaked else f"not sent ({len(cdn)} requests)"


async def _mismatch_check(server: ModelServer, run: Runner, n: int, data: bytes) -> str:
    if run is hub:
        return "no sha256 to check against (it checks the size only)"
    wrong = ModelFile(url=server.file_url("blob.bin"), dest=DEST, sha256="0" * 64, size=len(data))
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.suppress(DownloadFailed):
            await run(wrong, Path(tmp), n, None, True)
        left = sorted(p.name for p in (Path(tmp) / DEST).parent.iterdir())
    verdict = "the unverified file stays at its final name" if "model.bin" in left else "nothing at the final name"
    return f"{verdict} ({', '.join(left) or 'empty'})"


async def _resume_check(server: ModelServer, run: Runner, n: int, data: bytes) -> str:
    server.records.clear()
    cut = 700_000  # inside the first piece for every tool here (pieces of 1 MiB)
    server.add_fault("blob.bin", Fault(drop_after=cut, times=1, body_only=True))
    m = ModelFile(url=server.file_url("blob.bin"), dest=DEST, sha256=hashlib.sha256(data).hexdigest(),
                  size=len(data))
    with tempfile.TemporaryDirectory() as tmp:
        runs = 0
        while runs < 2 and not (Path(tmp) / DEST).exists():
            runs += 1
            with contextlib.suppress(DownloadFailed):
                await run(m, Path(tmp), n, None, False)
        done = (Path(tmp) / DEST).exists()
    extra = sum(r.sent for r in server.body_requests("blob.bin")) - len(data)
    return f"{'done' if done else 'NOT done'} in {runs} run(s), {extra} of the {cut} bytes before the cut fetched again"


async def safety(connections: int) -> list[tuple[str, str, str, str]]:
    """(tool, token on the redirect target?, a wrong sha256's leftovers, resume after a cut) per tool."""
    data = os.urandom(3 << 20)
    server = ModelServer(files={"blob.bin": data})
    await server.start()
    rows = []
    try:
        for label, run, n in tools(connections):
            if not (n == 1 and run is ours):
                rows.append((label, await _token_check(server, run, n, data),
                             await _mismatch_check(server, run, n, data), await _resume_check(server, run, n, data)))
    finally:
        await server.close()
    return rows
