"""Inline delivery: outputs come back base64-encoded in the response body.

For a 1024x1024 PNG (1.8 MB) the encoding and JSON serialisation are most of what a
bridge adds (FACTS.md), so each file is encoded once with SIMD base64 and the response
body is assembled as bytes around the encoded blobs (`render`) instead of passing
megabytes through a JSON serialiser. Files above `STREAM_ABOVE_BYTES` are not encoded
here at all: they stream from disk as the body is written (delivery/stream.py), so no
big output is ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pybase64
from pydantic import PrivateAttr

from comfy_bridge.delivery import redeliver
from comfy_bridge.delivery.base import Artifact
from comfy_bridge.delivery.convert import convert_artifacts
from comfy_bridge.delivery.stream import Base64File
from comfy_bridge.errors import DeliveryFailed
from comfy_bridge.schemas.job import GenerateResponse, JobInput, OutputFile
from comfy_bridge.settings import BridgeSettings

# Files above this are read and encoded in a thread so the event loop keeps serving.
_THREAD_ABOVE_BYTES = 4 * 1024 * 1024
# Strings shorter than this are left to the JSON serialiser.
_SPLICE_ABOVE_CHARS = 4096
# Files on disk above this stream into the body (delivery/stream.py) instead of being encoded.
STREAM_ABOVE_BYTES = 16 * 1024 * 1024

Part = bytes | Base64File


class InlineDestination:
    name = "inline"

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.max_bytes = settings.max_inline_bytes

    async def deliver(self, job: JobInput, artifacts: list[Artifact]) -> list[OutputFile]:
        artifacts = await convert_artifacts(artifacts, job.output)
        sizes = [a.size for a in artifacts]
        total = sum(sizes)
        if total > self.max_bytes:
            kept = await self._spool(job, artifacts, sizes)
            raise DeliveryFailed(
                f"outputs total {total} bytes, over the {self.max_bytes}-byte limit for inline "
                "delivery; give an `s3` destination (or raise COMFY_BRIDGE_MAX_INLINE_BYTES). "
                "The files were kept on the worker's spool (each output's spool_key).",
                retriable=False,  # the same request would fail anywhere
                total_bytes=total,
                max_inline_bytes=self.max_bytes,
                output=kept,
            )
        outputs = []
        for art, size in zip(artifacts, sizes):
            if size > STREAM_ABOVE_BYTES and art.data is None and art.path is not None:
                out = InlineOutputFile(filename=inline_name(job, art.filename), node_id=art.node_id,
                                       output_type=art.output_type, mimetype=art.mimetype, bytes=size)
                out._stream = await asyncio.to_thread(Base64File, art.path)
                outputs.append(out)
                continue
            if size > _THREAD_ABOVE_BYTES:
                encoded = await asyncio.to_thread(_encode, art)
            else:
                encoded = _encode(art)
            out = InlineOutputFile(
                filename=inline_name(job, art.filename),
                node_id=art.node_id,
                output_type=art.output_type,
                mimetype=art.mimetype,
                bytes=size,
                data=encoded.decode("ascii"),
            )
            out._encoded = encoded
            outputs.append(out)
        return outputs

    async def _spool(self, job: JobInput, artifacts: list[Artifact], sizes: list[int]) -> list[dict]:
        """Move outputs too big to return into the spool (ComfyUI's folder is emptied after)."""
        spool = redeliver.shared(self.settings).spool
        listed = []
        for art, size in zip(artifacts, sizes):
            entry = OutputFile(filename=art.filename, node_id=art.node_id, output_type=art.output_type,
                               mimetype=art.mimetype, bytes=size, upload_error="too big to return inline")
            path = await spool.keep(job.run_key, art)
            if path is not None:
                entry.spool_key = spool.key_of(path)
            listed.append(entry.model_dump(exclude_none=True))
        return listed


def inline_name(job: JobInput, filename: str) -> str:
    """`<request_id>_<filename>`: a caller saving every answer's files in one folder never
    has two requests' `ComfyUI_00001_.png` collide."""
    return filename if filename.startswith(f"{job.request_id}_") else f"{job.request_id}_{filename}"


class InlineOutputFile(OutputFile):
    """An OutputFile that also keeps its base64 as bytes, so rendering copies nothing, or
    (a big file) the open file its base64 streams from when the body is written."""

    _encoded: bytes | None = PrivateAttr(default=None)
    _stream: Base64File | None = PrivateAttr(default=None)


def _encode(art: Artifact) -> bytes:
    return pybase64.b64encode(art.read_bytes())


def render_parts(response: GenerateResponse) -> list[Part]:
    """The JSON body of `response` as pieces to write in order, big base64 blobs as-is.

    Base64 needs no JSON escaping, so each big string is replaced by a unique marker,
    the small remainder is serialised by pydantic, and the blobs go between the pieces:
    a 2.4 MB blob is never copied into a joined string, and a streamed file's base64
    (a Base64File part) is made only while it is written.
    """
    blobs: list[Part] = []
    marker = f"@cvw-{uuid.uuid4().hex}-"
    outputs = []
    for out in response.output:
        stream = getattr(out, "_stream", None)
        if stream is not None:
            outputs.append(out.model_copy(update={"data": f"{marker}{len(blobs)}@"}))
            blobs.append(stream)
        elif out.data is not None and len(out.data) > _SPLICE_ABOVE_CHARS:
            outputs.append(out.model_copy(update={"data": f"{marker}{len(blobs)}@"}))
            encoded = getattr(out, "_encoded", None)
            blobs.append(encoded if encoded is not None and len(encoded) == len(out.data) else out.data.encode("ascii"))
        else:
            outputs.append(out)
    if not blobs:
        return [response.model_dump_json().encode()]
    text = response.model_copy(update={"output": outputs}).model_dump_json().encode()
    parts: list[Part] = []
    pos = 0
    for i, blob in enumerate(blobs):
        token = f"{marker}{i}@".encode()
        at = text.index(token, pos)
        parts += [text[pos:at], blob]
        pos = at + len(token)
    parts.append(text[pos:])
    return parts


async def write_parts(resp: Any, parts: list[Part]) -> None:
    """Write rendered pieces to a prepared aiohttp StreamResponse; a streamed file's base64
    (Base64File) is encoded chunk by chunk as it goes out."""
    for part in parts:
        if isinstance(part, bytes):
            await resp.write(part)
        else:
            async for chunk in part.chunks():
                await resp.write(chunk)


def render(response: GenerateResponse) -> bytes:
    """The JSON body of `response` in one piece."""
    return b"".join(p if isinstance(p, bytes) else p.read_all() for p in render_parts(response))
