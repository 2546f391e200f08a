"""A file's base64, made chunk by chunk as the response is written, never whole.

Inline outputs up to a few MiB are encoded at once (fastest: FACTS.md). A big one (a
video, a batch of 4K frames) is held open instead: the response writer
(comfy_bridge/jobs/api_router.py) pulls `chunks()`, each 3 MiB of the file read with
pread and encoded in a thread, so a 1 GB output costs the bridge a few MiB of memory
(bench/large_output.py) and the event loop never encodes. The open descriptor keeps the
bytes readable after ComfyUI's output folder is emptied; it closes when the last
response holding it is gone. pread (no shared offset) lets two callers that joined one
run (comfy_bridge/jobs/inflight.py) stream the same file at once.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pybase64

# A multiple of 3, so each chunk's base64 joins the next with no padding in between.
CHUNK_BYTES = 3 * 1024 * 1024


class Base64File:
    """The base64 of one file, `len()` characters long, produced on demand."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)
        self.size = os.fstat(self._fd).st_size

    def __len__(self) -> int:
        return 4 * ((self.size + 2) // 3)

    def _chunk(self, offset: int) -> bytes:
        return pybase64.b64encode(os.pread(self._fd, CHUNK_BYTES, offset))

    async def chunks(self) -> AsyncIterator[bytes]:
        for offset in range(0, self.size, CHUNK_BYTES):
            yield await asyncio.to_thread(self._chunk, offset)

    def read_all(self) -> bytes:
        """The whole base64 at once (tests, and bodies that must be one string)."""
        return b"".join(self._chunk(offset) for offset in range(0, self.size, CHUNK_BYTES))

    def close(self) -> None:
        self._closer()
