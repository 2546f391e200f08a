"""Where outputs wait when they could not be delivered, within a disk budget.

A GPU-second is the expensive part: when the bucket is unreachable (or an output is too
big to return inline) the files a prompt made are moved here instead of deleted, so they
are re-uploaded once S3 is back (comfy_bridge/delivery/redeliver.py) and can be fetched
meanwhile (comfy_bridge/delivery/fetch_routes.py). One folder per run,
`<request_id>/<run_id>/` (`JobInput.run_key`); a file's `spool_key` is
`<request_id>/<run_id>/<filename>`. The spool never grows past `spool_budget_bytes`: the
oldest runs are evicted first, and a file larger than the whole budget is not kept.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.delivery.base import Artifact

log = logs.get(__name__)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Spool:
    """One directory per run under `root`; a byte budget over all of them."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self._lock = asyncio.Lock()

    async def keep(self, run_key: str, artifact: Artifact) -> Path | None:
        """Move (or write) the artifact into the spool; None when it cannot fit the budget."""
        async with self._lock:
            return await asyncio.to_thread(self._keep, run_key, artifact)

    def _keep(self, run_key: str, artifact: Artifact) -> Path | None:
        size = artifact.size
        if size > self.budget_bytes:
            log.warning(
                "output %s (%d bytes) is larger than the spool budget (%d bytes): not kept",
                artifact.filename, size, self.budget_bytes,
            )
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_room(size, keep=run_key)
        if self.usage() + size > self.budget_bytes:
            log.warning("spool full with this request's own files: %s not kept", artifact.filename)
            return None
        dest_dir = self.root / run_key
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(artifact.filename).name
        if artifact.data is not None:
            dest.write_bytes(artifact.data)
            if artifact.path is not None:
                artifact.path.unlink(missing_ok=True)
        else:
            assert artifact.path is not None
            shutil.move(str(artifact.path), dest)
        return dest

    def key_of(self, path: Path) -> str:
        """The `spool_key` of a kept file: its path under the spool."""
        return path.relative_to(self.root).as_posix()

    def resolve(self, spool_key: str) -> Path | None:
        """The kept file a `spool_key` names; None when absent or outside the spool."""
        if not spool_key or "\x00" in spool_key:
            return None
        base = self.root.resolve()
        path = (base / spool_key).resolve()
        return path if path.is_relative_to(base) and path != base and path.is_file() else None

    def discard(self, path: Path) -> None:
        """Remove a kept file (delivered at last) and the run folders it leaves empty."""
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = folder.parent

    def usage(self) -> int:
        return _dir_size(self.root) if self.root.exists() else 0

    def requests(self) -> list[str]:
        """Run keys (folders holding files) with spooled files, oldest first."""
        if not self.root.exists():
            return []
        dirs = {f.parent for f in self.root.rglob("*") if f.is_file()}
        return [self.key_of(d) for d in sorted(dirs, key=lambda d: d.stat().st_mtime)]

    def _make_room(self, needed: int, keep: str) -> None:
        used = self.usage()
        for run_key in self.requests():
            if used + needed <= self.budget_bytes:
                return
            if run_key == keep:
                continue
            victim = self.root / run_key
            freed = _dir_size(victim)
            shutil.rmtree(victim, ignore_errors=True)
            self._prune(victim.parent)
            used -= freed
            log.warning("spool over budget: evicted run %s (%d bytes)", run_key, freed)
