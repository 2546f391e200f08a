"""The one interface every output destination implements (inline, S3, ...).

The job runner hands a destination the files a prompt made; the destination answers
with the `output` entries of the response. A destination that cannot deliver raises
DeliveryFailed carrying the entries it could make (with `upload_error` set), so the
runner can still answer with everything that was produced.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from comfy_bridge.schemas.job import JobInput, OutputFile

mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("audio/flac", ".flac")
mimetypes.add_type("audio/wav", ".wav")  # the stdlib says audio/x-wav
mimetypes.add_type("model/gltf-binary", ".glb")


def guess_mimetype(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


@dataclass
class Artifact:
    """A file a node reported: where its bytes are, and what it is."""

    filename: str
    node_id: str
    output_type: str
    mimetype: str
    path: Path | None = None
    data: bytes | None = None
    subfolder: str = ""
    comfy_type: str = "output"

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size


class Destination(Protocol):
    """Delivers a request's artifacts; called once per request."""

    name: str

    async def deliver(self, job: JobInput, artifacts: list[Artifact]) -> list[OutputFile]: ...
