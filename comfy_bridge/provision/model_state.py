"""What is on disk for a manifest model, and the record of files already verified.

A file reaches its final name only after its sha256 matches the manifest
(comfy_bridge/provision/file_download.py), so a file at the final name is checked here by
size, then by sha256 unless `.comfy-worker-verified.json` next to the models vouches for it:
re-hashing 7 GB on every start would cost seconds, so a verified file is remembered by
(size, mtime).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.provision.json_records import read_record, write_record
from comfy_bridge.provision.manifest import ModelFile
from comfy_bridge.provision.part_file import PartState, part_path

log = logs.get(__name__)

VERIFIED_FILE = ".comfy-worker-verified.json"
_HASH_BLOCK = 8 << 20

ModelStatus = Literal["ok", "downloaded", "missing", "partial", "wrong_size", "wrong_hash", "failed"]


class ModelReport(BaseModel):
    dest: str
    status: ModelStatus
    detail: str = ""
    bytes: int = 0


class VerifiedCache:
    """Remembers which files were hashed and matched, keyed by what a change would alter."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / VERIFIED_FILE
        self.entries = read_record(self.path)
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
        write_record(self.path, self.entries)


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
        part = part_path(final)
        if part.exists():
            done = PartState.load(part, m)
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

