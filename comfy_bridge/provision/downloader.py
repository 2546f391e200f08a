"""Model downloads that survive real networks: Range requests, resume, sha256, tokens.

Why this shape:
- One connection to a model host is often throttled (Hugging Face's CDN and Civitai's
  buckets serve each stream at a fraction of the link), so a file is cut into chunks
  fetched over several connections at once, and several files are fetched at once.
- Cold starts on Vast are paid by the minute: an interrupted download resumes from its
  `.part` file (a sidecar `.part.json` records how much of each chunk is on disk) instead
  of starting over.
- A file reaches its final name only after its sha256 matches the manifest, so ComfyUI
  never loads a truncated or swapped checkpoint; a mismatch leaves no file behind.
- Re-hashing 7 GB on every start would cost seconds, so a verified file is remembered by
  (size, mtime) in `.comfy-worker-verified.json` next to the models.
- Tokens come from HF_TOKEN / CIVITAI_TOKEN, travel only in an Authorization header to
  the manifest URL's own host (never to the CDN it redirects to) and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, TextIO
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.errors import DownloadFailed
from comfy_bridge.provision.manifest import TOKEN_ENV, ModelFile

if TYPE_CHECKING:
    import aiohttp

log = logs.get(__name__)

VERIFIED_FILE = ".comfy-worker-verified.json"
_WRITE_BUF = 1 << 20
_READ_PIECE = 256 << 10
_HASH_BLOCK = 8 << 20

ModelStatus = Literal["ok", "downloaded", "missing", "partial", "wrong_size", "wrong_hash", "failed"]


class ModelReport(BaseModel):
    dest: str
    status: ModelStatus
    detail: str = ""
    bytes: int = 0


@dataclass
class DownloadOptions:
    connections: int = 8
    parallel_files: int = 3
    # Chunks are at least this big, so small files use one connection.
    min_chunk_bytes: int = 16 << 20
    max_chunk_bytes: int = 256 << 20
    retries: int = 5
    backoff_s: float = 0.5
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0
    progress_interval_s: float = 5.0
    # Progress bar on stderr; None = only when stderr is a terminal.
    bar: bool | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


# ---------------------------------------------------------------- verified-file cache


class VerifiedCache:
    """Remembers which files were hashed and matched, keyed by what a change would alter."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / VERIFIED_FILE
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    @staticmethod
    def _key(st: os.stat_result, sha256: str) -> dict[str, Any]:
        # Not the inode nor sub-second mtime: image layers and volume snapshots keep neither,
        # and a baked-in model must not be re-hashed at every cold start.
        return {"sha256": sha256, "size": st.st_size, "mtime": int(st.st_mtime)}

    def matches(self, dest: str, st: os.stat_result, sha256: str) -> bool:
        return self.entries.get(dest) == self._key(st, sha256)

    def record(self, dest: str, st: os.stat_result, sha256: str) -> None:
        self.entries[dest] = self._key(st, sha256)
        self.dirty = True

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


async def check_model(m: ModelFile, models_dir: Path, cache: VerifiedCache, *, rehash: bool = False,
                      record: bool = True) -> ModelReport:
    """What is on disk for one manifest entry; hashes only when the cache cannot vouch."""
    final = models_dir / m.dest
    try:
        st = final.stat()
    except FileNotFoundError:
        part = final.with_name(final.name + ".part")
        if part.exists():
            done = _PartState.load(part, m)
            got = done.bytes_done() if done else 0
            return ModelReport(dest=m.dest, status="partial", bytes=got,
                               detail=f"{got} of {m.size} bytes downloaded ({final.name}.part)")
        return ModelReport(dest=m.dest, status="missing", detail=f"{final} absent")
    if st.st_size != m.size:
        return ModelReport(dest=m.dest, status="wrong_size", bytes=st.st_size,
                           detail=f"{st.st_size} bytes on disk, manifest says {m.size}")
    if not rehash and cache.matches(m.dest, st, m.sha256):
        return ModelReport(dest=m.dest, status="ok", bytes=st.st_size)
    log.info("verifying sha256 of %s (%.1f GB)", m.dest, st.st_size / 1e9)
    digest = await asyncio.to_thread(sha256_file, final)
    if digest != m.sha256:
        return ModelReport(dest=m.dest, status="wrong_hash", bytes=st.st_size,
                           detail=f"sha256 {digest}, manifest says {m.sha256}")
    if record:
        cache.record(m.dest, st, m.sha256)
    return ModelReport(dest=m.dest, status="ok", bytes=st.st_size)


# ---------------------------------------------------------------- resumable part state


@dataclass
class _PartState:
    """Chunk layout of a `.part` file and how many bytes of each chunk are written."""

    sha256: str
    size: int
    chunk_size: int
    done: list[int]

    @property
    def n(self) -> int:
        return len(self.done)

    def span(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def remaining(self, i: int) -> int:
        start, end = self.span(i)
        return end - start + 1 - self.done[i]

    def bytes_done(self) -> int:
        return sum(self.done)

    @classmethod
    def fresh(cls, m: ModelFile, chunk_size: int) -> "_PartState":
        return cls(m.sha256, m.size, chunk_size, [0] * math.ceil(m.size / chunk_size))

    @staticmethod
    def path_for(part: Path) -> Path:
        return part.with_name(part.name + ".json")

    @classmethod
    def load(cls, part: Path, m: ModelFile) -> "_PartState | None":
        try:
            raw = json.loads(cls.path_for(part).read_text())
            state = cls(raw["sha256"], raw["size"], raw["chunk_size"], list(raw["done"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if state.sha256 != m.sha256 or state.size != m.size or state.chunk_size <= 0:
            return None
        if state.n != math.ceil(state.size / state.chunk_size) or part.stat().st_size != state.size:
            return None
        if any(d < 0 or d > state.span(i)[1] - state.span(i)[0] + 1 for i, d in enumerate(state.done)):
            return None
        return state

    def save(self, part: Path) -> None:
        p = self.path_for(part)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps({"sha256": self.sha256, "size": self.size,
                                   "chunk_size": self.chunk_size, "done": self.done}))
        os.replace(tmp, p)


# ---------------------------------------------------------------- progress


class Progress:
    """Aggregate progress: a JSON log line per active file every few seconds, and a bar on a tty."""

    def __init__(self, interval_s: float, bar: bool | None, stream: TextIO | None = None) -> None:
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.files: dict[str, list[int]] = {}  # dest -> [done, total]
        self.started = time.monotonic()
        self.fetched = 0
        self._task: asyncio.Task[None] | None = None
        self._last_bar = 0.0

    def start(self, dest: str, total: int, done: int) -> None:
        self.files[dest] = [done, total]

    def add(self, dest: str, n: int) -> None:
        self.files[dest][0] += n
        self.fetched += n
        if self.bar and time.monotonic() - self._last_bar > 0.2:
            self._draw()

    def finish(self, dest: str) -> None:
        self.files.pop(dest, None)

    def _rate(self) -> float:
        return self.fetched / max(time.monotonic() - self.started, 1e-6)

    def _draw(self) -> None:
        self._last_bar = time.monotonic()
        done = sum(d for d, _ in self.files.values())
        total = sum(t for _, t in self.files.values()) or 1
        width = 30
        filled = int(width * done / total)
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}% "
                f"{done / 1e9:.2f}/{total / 1e9:.2f} GB {self._rate() / 1e6:7.1f} MB/s "
                f"{len(self.files)} file(s)")
        with contextlib.suppress(Exception):
            self.stream.write(line)
            self.stream.flush()

    def log_now(self) -> None:
        rate = self._rate()
        for dest, (done, total) in list(self.files.items()):
            eta = (total - done) / rate if rate > 0 else None
            log.info("downloading %s: %.1f%% (%d/%d bytes), %.1f MB/s overall", dest,
                     100 * done / total, done, total, rate / 1e6,
                     extra={"fields": {"dest": dest, "done": done, "total": total,
                                       "mb_s": round(rate / 1e6, 2),
                                       "eta_s": round(eta) if eta is not None else None}})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.log_now()

    def __enter__(self) -> "Progress":
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
        if self.bar:
            with contextlib.suppress(Exception):
                self.stream.write("\n")
                self.stream.flush()


# ---------------------------------------------------------------- one file


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


class _FileDownload:
    def __init__(self, session: aiohttp.ClientSession, m: ModelFile, models_dir: Path,
                 opts: DownloadOptions, progress: Progress) -> None:
        self.session = session
        self.m = m
        self.opts = opts
        self.progress = progress
        self.final = models_dir / m.dest
        self.part = self.final.with_name(self.final.name + ".part")
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
        """Follow redirects by hand (to drop the token off-origin); learn size and Range support."""
        import aiohttp
        url = self.m.url
        for _ in range(10):
            headers = {**self._headers_for(url), "Range": "bytes=0-0"}
            try:
                async with self.session.get(url, headers=headers, allow_redirects=False) as r:
                    if r.status in (301, 302, 303, 307, 308) and "Location" in r.headers:
                        url = urljoin(url, r.headers["Location"])
                        continue
                    if r.status == 206:
                        total = r.headers.get("Content-Range", "").rpartition("/")[2]
                        size = int(total) if total.isdigit() else None
                        self.ranges = True
                    elif r.status == 200:
                        size = r.content_length
                        self.ranges = False
                    else:
                        raise self._http_error(r.status, url)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            self.url = url
            if size is not None and size != self.m.size:
                raise DownloadFailed(
                    f"{self.m.dest}: {_host(url)} serves {size} bytes, the manifest says {self.m.size}: the "
                    "file changed upstream; pin the url to a revision or update size and sha256",
                    dest=self.m.dest)
            return self.m.size
        raise DownloadFailed(f"{self.m.dest}: too many redirects from {self.origin}", dest=self.m.dest)

    async def _fetch(self, fd: int, state: _PartState, i: int) -> None:
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

    async def _with_retries(self, what: str, fn: Any) -> Any:
        for attempt in range(self.opts.retries + 1):
            try:
                return await fn()
            except _Transient as exc:
                if attempt == self.opts.retries:
                    raise DownloadFailed(f"{self.m.dest}: {what} failed after {attempt + 1} tries: {exc}",
                                         dest=self.m.dest) from None
                delay = self.opts.backoff_s * 2**attempt
                log.warning("%s: %s (%s), retrying in %.1fs", self.m.dest, what, exc, delay)
                await asyncio.sleep(delay)

    def _chunk_size(self) -> int:
        if not self.ranges or self.opts.connections <= 1:
            return self.m.size
        target = math.ceil(self.m.size / (self.opts.connections * 4))
        return max(self.opts.min_chunk_bytes, min(self.opts.max_chunk_bytes, target))

    async def run(self) -> ModelReport:
        began = time.monotonic()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        await self._with_retries("reaching the host", self._resolve)
        state = _PartState.load(self.part, self.m) if self.part.exists() else None
        if state and not self.ranges:
            state = None  # no Range support: a partial file cannot be continued
        if state is None:
            state = _PartState.fresh(self.m, self._chunk_size())
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
            _PartState.path_for(self.part).unlink(missing_ok=True)
            raise DownloadFailed(f"{self.m.dest}: sha256 mismatch: got {digest}, manifest says {self.m.sha256}; "
                                 "the download was discarded", dest=self.m.dest, sha256=digest)
        os.replace(self.part, self.final)
        _PartState.path_for(self.part).unlink(missing_ok=True)
        took = time.monotonic() - began
        fetched = self.m.size - resumed
        log.info("downloaded %s: %d bytes in %.1fs (%.1f MB/s)", self.m.dest, fetched, took,
                 fetched / max(took, 1e-6) / 1e6,
                 extra={"fields": {"dest": self.m.dest, "bytes": fetched, "seconds": round(took, 2)}})
        return ModelReport(dest=self.m.dest, status="downloaded", bytes=self.m.size,
                           detail=f"{fetched} bytes in {took:.1f}s" + (f", resumed at {resumed}" if resumed else ""))

    async def _save_periodically(self, state: _PartState, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if not stop.is_set():
                await asyncio.to_thread(state.save, self.part)

    async def _fetch_all(self, fd: int, state: _PartState) -> None:
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
            fresh = _PartState.fresh(self.m, self.m.size)
            state.chunk_size, state.done = fresh.chunk_size, fresh.done
            pending.clear()
            pending.append(0)
            await fetch_chunk(0)
        except* DownloadFailed as group:
            raise group.exceptions[0] from None
        except* OSError as group:
            raise DownloadFailed(f"{self.m.dest}: cannot write {self.part}: {group.exceptions[0]}",
                                 dest=self.m.dest) from None


# ---------------------------------------------------------------- all files


def _remaining_bytes(m: ModelFile, models_dir: Path) -> int:
    final = models_dir / m.dest
    part = final.with_name(final.name + ".part")
    state = _PartState.load(part, m) if part.exists() else None
    return m.size - (state.bytes_done() if state else 0)


async def ensure_models(models: list[ModelFile], models_dir: Path, opts: DownloadOptions | None = None, *,
                        check_only: bool = False, rehash: bool = False) -> list[ModelReport]:
    """Bring every manifest model to its verified final file (or, with check_only, just say what is off).

    Files already present and verified are skipped; failures of some files do not stop
    the others, and are raised together at the end as one DownloadFailed.
    """
    opts = opts or DownloadOptions()
    cache = VerifiedCache(models_dir)
    reports = [await check_model(m, models_dir, cache, rehash=rehash, record=not check_only) for m in models]
    todo = [m for m, r in zip(models, reports, strict=True) if r.status != "ok"]
    if check_only or not todo:
        if cache.dirty:
            _save_cache(cache, models_dir)
        return reports

    models_dir.mkdir(parents=True, exist_ok=True)
    need = sum(_remaining_bytes(m, models_dir) for m in todo)
    free = shutil.disk_usage(models_dir).free
    if need > free:
        raise DownloadFailed(f"models need {need / 1e9:.1f} GB more in {models_dir}, only {free / 1e9:.1f} GB free",
                             need_bytes=need, free_bytes=free)
    for m, r in zip(models, reports, strict=True):
        if r.status in ("wrong_size", "wrong_hash"):
            log.warning("replacing %s: %s", m.dest, r.detail)

    import aiohttp  # here, not at module level: a provision with nothing to fetch starts faster

    timeout = aiohttp.ClientTimeout(total=None, connect=opts.connect_timeout_s, sock_read=opts.read_timeout_s)
    connector = aiohttp.TCPConnector(limit=opts.connections * opts.parallel_files + 4, limit_per_host=0)
    gate = asyncio.Semaphore(opts.parallel_files)
    by_dest = {r.dest: i for i, r in enumerate(reports)}
    failures: list[DownloadFailed] = []

    async def one(session: aiohttp.ClientSession, m: ModelFile, progress: Progress) -> None:
        async with gate:
            try:
                report = await _FileDownload(session, m, models_dir, opts, progress).run()
            except DownloadFailed as exc:
                log.error("%s", exc.message, extra={"fields": {"dest": m.dest}})
                failures.append(exc)
                reports[by_dest[m.dest]] = ModelReport(dest=m.dest, status="failed", detail=exc.message)
                return
            st = (models_dir / m.dest).stat()
            cache.record(m.dest, st, m.sha256)
            reports[by_dest[m.dest]] = report

    log.info("downloading %d model file(s), %.2f GB, %d at a time, %d connections each",
             len(todo), need / 1e9, opts.parallel_files, opts.connections)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
        with Progress(opts.progress_interval_s, opts.bar) as progress:
            await asyncio.gather(*(one(session, m, progress) for m in todo))
    _save_cache(cache, models_dir)
    if failures:
        if len(failures) == 1:
            raise failures[0]
        raise DownloadFailed(f"{len(failures)} model downloads failed:\n  " +
                             "\n  ".join(f.message for f in failures),
                             failures=[f.to_dict() for f in failures])
    return reports


def _save_cache(cache: VerifiedCache, models_dir: Path) -> None:
    try:
        cache.save()
    except OSError as exc:  # a read-only models folder still works, it just re-hashes next time
        log.warning("cannot record verified models in %s: %s", models_dir, exc)
