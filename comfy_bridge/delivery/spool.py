"""Where outputs wait when they could not be delivered, within a disk budget.

A GPU-second is the expensive part: when the bucket is unreachable the files a prompt
made are moved here instead of deleted, so an operator (or a later retry) can still
get them. The spool never grows past `spool_budget_bytes`: the oldest requests are
evicted first, and a file larger than the whole budget is not kept.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.delivery.base import Artifact

log = logs.get(__name__)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Spool:
    """One directory per request under `root`; a byte budget over all of them."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self._lock = asyncio.Lock()

    async def keep(self, request_id: str, artifact: Artifact) -> Path | None:
        """Move (or write) the artifact into the spool; None when it cannot fit the budget."""
        async with self._lock:
            return await asyncio.to_thread(self._keep, request_id, artifact)

    def _keep(self, request_id: str, artifact: Artifact) -> Path | None:
        size = artifact.size
        if size > self.budget_bytes:
            log.warning(
                "output %s (%d bytes) is larger than the spool budget (%d bytes): not kept",
                artifact.filename, size, self.budget_bytes,
            )
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_room(size, keep=request_id)
        if self.usage() + size > self.budget_bytes:
            log.warning("spool full with this request's own files: %s not kept", artifact.filename)
            return None
        dest_dir = self.root / request_id
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

    def usage(self) -> int:
        return _dir_size(self.root) if self.root.exists() else 0

    def requests(self) -> list[str]:
        """Request ids with spooled files, oldest first."""
        if not self.root.exists():
            return []
        dirs = [d for d in self.root.iterdir() if d.is_dir()]
        return [d.name for d in sorted(dirs, key=lambda d: d.stat().st_mtime)]

    def _make_room(self, needed: int, keep: str) -> None:
        used = self.usage()
        for request_id in self.requests():
            if used + needed <= self.budget_bytes:
                return
            if request_id == keep:
                continue
            victim = self.root / request_id
            freed = _dir_size(victim)
            shutil.rmtree(victim, ignore_errors=True)
            used -= freed
            log.warning("spool over budget: evicted request %s (%d bytes)", request_id, freed)
