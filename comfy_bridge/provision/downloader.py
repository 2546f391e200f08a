"""Bring every manifest model to its verified final file: which to fetch, disk space, how many at once.

What is already there is checked first (comfy_bridge/provision/model_state.py) and skipped
when verified; the rest is fetched a few files at a time, each over several connections
(comfy_bridge/provision/file_download.py), under one progress display
(comfy_bridge/provision/download_progress.py). The failure of one file does not stop the
others; all failures are raised together at the end.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.errors import DownloadFailed
from comfy_bridge.provision.download_progress import Progress
from comfy_bridge.provision.file_download import DownloadOptions, FileDownload
from comfy_bridge.provision.manifest import ModelFile
from comfy_bridge.provision.model_state import ModelReport, VerifiedCache, check_model
from comfy_bridge.provision.part_file import PartState, part_path

__all__ = ["DownloadOptions", "ModelReport", "ensure_models"]

log = logs.get(__name__)


def _remaining_bytes(m: ModelFile, models_dir: Path) -> int:
    final = models_dir / m.dest
    part = part_path(final)
    state = PartState.load(part, m) if part.exists() else None
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
                report = await FileDownload(session, m, models_dir, opts, progress).run()
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
