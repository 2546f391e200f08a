"""One model file's download: Range requests over several connections, resume, sha256, tokens.

Why this shape:
- One connection to a model host is often throttled (Hugging Face's CDN and Civitai's
  buckets serve each stream at a fraction of the link), so a file is cut into chunks
  fetched over several connections at once (comfy_bridge/provision/downloader.py fetches
  several files at once).
- An interrupted download resumes from its `.part` file (comfy_bridge/provision/part_file.py).
- A file reaches its final name only after its sha256 matches the manifest, so ComfyUI
  never loads a truncated or swapped checkpoint; a mismatch leaves no file behind.
- Tokens come from HF_TOKEN / CIVITAI_TOKEN, travel only in an Authorization header to
  the manifest URL's own host (never to the CDN it redirects to) and are never logged;
  a signed CDN URL that expires mid-download is resolved again from the origin.

bench/provision.py measures this beside `aria2c -x N` and huggingface_hub: as fast as
aria2c on a per-connection-throttled host, while aria2c sends a custom Authorization
header on to the redirect target and leaves a file that failed its checksum at the final
name; huggingface_hub uses one connection per file (without Xet) and checks only sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, TypeVar
from urllib.parse import urlsplit


from comfy_bridge import logs
from comfy_bridge.errors import DownloadFailed
from comfy_bridge.retry import RetryPolicy
from comfy_bridge.provision.download_progress import Progress
from comfy_bridge.provision.manifest import TOKEN_ENV, ModelFile
from comfy_bridge.provision.model_state import ModelReport, sha256_file
from comfy_bridge.provision.part_file import PartState, part_path

if TYPE_CHECKING:
    import aiohttp

log = logs.get(__name__)

T = TypeVar("T")
_WRITE_BUF = 1 << 20
_READ_PIECE = 256 << 10


@dataclass
class DownloadOptions:
    connections: int = 8
    parallel_files: int = 3
    # Chunks are at least this big, so small files use one connection.
    min_chunk_bytes: int = 16 << 20
    max_chunk_bytes: int = 256 << 20
    retries: int = 5
    # Retry n waits a random time up to backoff_s * 2**(n-1), at most 30 s (comfy_bridge/retry.py).
    backoff_s: float = 0.5
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0
    progress_interval_s: float = 5.0
    # Progress bar on stderr; None = only when stderr is a terminal.
    bar: bool | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


class _Transient(Exception):
    """Worth retrying: connection dropped, 5xx, 429, a short body."""


class _NoRanges(Exception):
    """The server answered a Range request with the whole file."""


class _Expired(_Transient):
    """A redirect target (a signed CDN URL) refused us: it expired; resolve the URL again."""


def _host(url: str) -> str:
    return urlsplit(url).netloc.lower()


def _guess_auth(url: str) -> str | None:
    host = _host(url)
    if host.endswith("huggingface.co") or host.endswith("hf.co"):
        return "hf"
    if host.endswith("civitai.com"):
        return "civitai"
    return None


def token_for(m: ModelFile, env: Mapping[str, str]) -> str | None:
    if m.auth == "hf":
        return env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None
    if m.auth == "civitai":
        return env.get("CIVITAI_TOKEN") or None
    return None


class FileDownload:
    """Fetch one manifest entry to its verified final file (or raise DownloadFailed naming why)."""

    def __init__(self, session: aiohttp.ClientSession, m: ModelFile, models_dir: Path,
                 opts: DownloadOptions, progress: Progress) -> None:
        self.session = session
        self.m = m
        self.opts = opts
        self.progress = progress
        self.final = models_dir / m.dest
        self.part = part_path(self.final)
        token = token_for(m, opts.env)
        self.origin = _host(m.url)
        self.auth_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.token_set = bool(token)
        self.url = m.url
        self.ranges = True
        self._expired = False
        self._resolving = asyncio.Lock()

    # -- errors that name what to do

    def _http_error(self, status: int, url: str) -> Exception:
        host = _host(url)
        if status in (401, 403):
            kind = self.m.auth if self.m.auth != "none" else _guess_auth(self.m.url)
            env = TOKEN_ENV.get(kind or "")
            if self.m.auth == "none" and env:
                hint = f'set auth = "{kind}" for it in the manifest and export {env}'
            elif env and self.token_set:
                hint = (f"{env} is set but {host} refused it: check the token can read this file "
                        "(gated repositories need their license accepted on the model page)")
            elif env:
                hint = f"set {env} to a token that can read this file"
            else:
                hint = "this URL needs credentials the manifest cannot provide (auth is hf, civitai or none)"
            return DownloadFailed(f"{self.m.dest}: {status} from {host}: {hint}", dest=self.m.dest,
                                  http_status=status, token_env=env)
        if status == 404:
            return DownloadFailed(f"{self.m.dest}: 404 not found at {host}: check the url in the manifest",
                                  dest=self.m.dest, http_status=status)
        if status == 429 or status >= 500:
            return _Transient(f"{status} from {host}")
        return DownloadFailed(f"{self.m.dest}: unexpected HTTP {status} from {host}", dest=self.m.dest,
                              http_status=status)

    def _headers_for(self, url: str) -> dict[str, str]:
        # The token goes only to the host the manifest names, never to the CDN it redirects to.
        return dict(self.auth_headers) if _host(url) == self.origin else {}

    async def _resolve(self) -> int:
        """Learn the URL redirects end at, the size and Range support.

        aiohttp drops the Authorization header when a redirect leaves the origin, so the
        token never reaches the CDN a model host redirects to (tests/provision/test_downloader.py).
        """
        import aiohttp
        try:
            async with self.session.get(self.m.url, headers={**self.auth_headers, "Range": "bytes=0-0"},
                                        max_redirects=10) as r:
                url = str(r.url)
                if r.status == 206:
                    total = r.headers.get("Content-Range", "").rpartition("/")[2]
                    size = int(total) if total.isdigit() else None
                    self.ranges = True
                elif r.status == 200:
                    size = r.content_length
                    self.ranges = False
                else:
                    raise self._http_error(r.status, url)
        except aiohttp.TooManyRedirects:
            raise DownloadFailed(f"{self.m.dest}: too many redirects from {self.origin}", dest=self.m.dest) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        self.url = url
        if size is not None and size != self.m.size:
            raise DownloadFailed(
                f"{self.m.dest}: {_host(url)} serves {size} bytes, the manifest says {self.m.size}: the "
                "file changed upstream; pin the url to a revision or update size and sha256",
                dest=self.m.dest)
        return self.m.size

    async def _fetch(self, fd: int, state: PartState, i: int) -> None:
        import aiohttp
        start, end = state.span(i)
        pos = start + state.done[i]
        headers = self._headers_for(self.url)
        whole = not self.ranges
        if not whole:
            headers["Range"] = f"bytes={pos}-{end}"
        buf = bytearray()

        async def flush() -> None:
            # What arrived is kept even when the connection then drops: a retry resumes after it.
            nonlocal pos
            if buf:
                await asyncio.to_thread(os.pwrite, fd, bytes(buf), pos)
                pos += len(buf)
                state.done[i] += len(buf)
                self.progress.add(self.m.dest, len(buf))
                buf.clear()

        try:
            async with self.session.get(self.url, headers=headers) as r:
                if r.status == 200 and not whole:
                    raise _NoRanges()
                if r.status in (401, 403, 410) and _host(self.url) != self.origin:
                    self._expired = True
                    raise _Expired(f"{r.status} from {_host(self.url)} (signed URL expired?)")
                if r.status not in (200, 206):
                    raise self._http_error(r.status, self.url)
                try:
                    async for data in r.content.iter_chunked(_READ_PIECE):
                        room = end + 1 - pos - len(buf)
                        buf += data[:room]
                        if len(buf) >= _WRITE_BUF or len(data) >= room:
                            await flush()
                        if len(data) >= room:
                            break
                finally:
                    await flush()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if pos != end + 1:
            raise _Transient(f"connection closed after {pos - start} of {end - start + 1} bytes")

    async def _with_retries(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry what is worth retrying (comfy_bridge/retry.py); name what failed."""
        retrying = RetryPolicy(first_s=self.opts.backoff_s, cap_s=30.0, attempts=self.opts.retries + 1,
                               retry_on=lambda exc: isinstance(exc, _Transient), what=f"{self.m.dest}: {what}",
                               describe=str, log=log).retrying()
        try:
            return await retrying(fn)
        except _Transient as exc:
            raise DownloadFailed(f"{self.m.dest}: {what} failed after {self.opts.retries + 1} tries: {exc}",
                                 dest=self.m.dest) from None

    def _chunk_size(self) -> int:
        if not self.ranges or self.opts.connections <= 1:
            return self.m.size
        target = math.ceil(self.m.size / (self.opts.connections * 4))
        return max(self.opts.min_chunk_bytes, min(self.opts.max_chunk_bytes, target))

    async def run(self) -> ModelReport:
        began = time.monotonic()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        await self._with_retries("reaching the host", self._resolve)
        state = PartState.load(self.part, self.m) if self.part.exists() else None
        if state and not self.ranges:
            state = None  # no Range support: a partial file cannot be continued
        if state is None:
            state = PartState.fresh(self.m, self._chunk_size())
        resumed = state.bytes_done()
        if resumed:
            log.info("resuming %s from %d of %d bytes", self.m.dest, resumed, self.m.size)
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self.m.size)
            self.progress.start(self.m.dest, self.m.size, resumed)
            stop = asyncio.Event()
            saver = asyncio.get_running_loop().create_task(self._save_periodically(state, stop))
            try:
                await self._fetch_all(fd, state)
            finally:
                stop.set()
                await saver  # let a save in flight finish: it must not land after the cleanup below
                state.save(self.part)
            os.fsync(fd)
        finally:
            os.close(fd)
            self.progress.finish(self.m.dest)
        digest = await asyncio.to_thread(sha256_file, self.part)
        if digest != self.m.sha256:
            self.part.unlink(missing_ok=True)
            PartState.path_for(self.part).unlink(missing_ok=True)
            raise DownloadFailed(f"{self.m.dest}: sha256 mismatch: got {digest}, manifest says {self.m.sha256}; "
                                 "the download was discarded", dest=self.m.dest, sha256=digest)
        os.replace(self.part, self.final)
        PartState.path_for(self.part).unlink(missing_ok=True)
        took = time.monotonic() - began
        fetched = self.m.size - resumed
        log.info("downloaded %s: %d bytes in %.1fs (%.1f MB/s)", self.m.dest, fetched, took,
                 fetched / max(took, 1e-6) / 1e6,
                 extra={"fields": {"dest": self.m.dest, "bytes": fetched, "seconds": round(took, 2)}})
        return ModelReport(dest=self.m.dest, status="downloaded", bytes=self.m.size,
                           detail=f"{fetched} bytes in {took:.1f}s" + (f", resumed at {resumed}" if resumed else ""))

    async def _save_periodically(self, state: PartState, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if not stop.is_set():
                await asyncio.to_thread(state.save, self.part)

    async def _fetch_all(self, fd: int, state: PartState) -> None:
        pending = deque(i for i in range(state.n) if state.remaining(i) > 0)

        async def fetch_chunk(i: int) -> None:
            async def once() -> None:
                if self._expired:
                    async with self._resolving:
                        if self._expired:
                            await self._resolve()
                            self._expired = False
                if not self.ranges and state.done[i]:
                    self.progress.add(self.m.dest, -state.done[i])
                    state.done[i] = 0  # whole-file stream: start over
                await self._fetch(fd, state, i)

            await self._with_retries(f"chunk {i + 1}/{state.n}", once)

        async def worker() -> None:
            while pending:
                await fetch_chunk(pending.popleft())

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(max(1, min(self.opts.connections, len(pending)))):
                    tg.create_task(worker())
        except* _NoRanges:
            log.warning("%s: %s ignores Range requests; downloading over one connection", self.m.dest,
                        _host(self.url))
            self.ranges = False
            self.progress.add(self.m.dest, -state.bytes_done())
            fresh = PartState.fresh(self.m, self.m.size)
            state.chunk_size, state.done = fresh.chunk_size, fresh.done
            pending.clear()
            pending.append(0)
            await fetch_chunk(0)
        except* DownloadFailed as group:
            raise group.exceptions[0] from None
        except* OSError as group:
            raise DownloadFailed(f"{self.m.dest}: cannot write {self.part}: {group.exceptions[0]}",
                                 dest=self.m.dest) from None

