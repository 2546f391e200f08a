"""Wire schemas of `POST /generate/stream`: the Server-Sent Events a caller receives.

Each event is `event: <name>` + `data: <one line of JSON>`; lines starting with `:`
are keep-alive comments. In order: `queued` (updated while the prompt waits),
`started`, any number of `progress` / `preview` / `output`, then exactly one
`result` (the `/generate/sync` success body) or `error` (the sync failure body plus
its `http_status`). One SSE reader (`SSEDecoder`) serves the worker's relay, the
backend client and the MCP server, so all three read the stream the same way.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Iterator, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import to_json

from comfy_bridge.schemas.job import FailureResponse, GenerateResponse, OutputFile

ROUTE = "/generate/stream"  # the bridge's route, and the PyWorker's in front of it
CONTENT_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str | None = None
    prompt_id: str | None = None


class QueuedEvent(_Event):
    """In ComfyUI's queue: `position` prompts run or wait ahead of this one (0: next)."""

    event: Literal["queued"] = "queued"
    position: int | None = None


class StartedEvent(_Event):
    event: Literal["started"] = "started"


class ProgressEvent(_Event):
    """A node started (`value`/`max` absent) or reported a step; `fraction` is the prompt's."""

    event: Literal["progress"] = "progress"
    node: str | None = None
    node_type: str | None = None
    value: float | None = None
    max: float | None = None
    fraction: float = Field(ge=0.0, le=1.0, default=0.0)


class PreviewEvent(_Event):
    """A latent preview (opt-in `previews: true`): a small JPEG, base64."""

    event: Literal["preview"] = "preview"
    node: str | None = None
    mimetype: str = "image/jpeg"
    data: str


class OutputEvent(_Event):
    """One output delivered to its destination (S3): its URL before the prompt's result."""

    event: Literal["output"] = "output"
    output: OutputFile


class ResultEvent(BaseModel):
    """The final event of a success: the `/generate/sync` body."""

    event: Literal["result"] = "result"
    response: GenerateResponse


class ErrorEvent(BaseModel):
    """The final event of a failure: the `/generate/sync` failure body and its status."""

    event: Literal["error"] = "error"
    http_status: int
    failure: FailureResponse


StreamEvent = Annotated[
    Union[QueuedEvent, StartedEvent, ProgressEvent, PreviewEvent, OutputEvent, ResultEvent, ErrorEvent],
    Field(discriminator="event"),
]
_EVENT = TypeAdapter(StreamEvent)
FINAL_EVENTS = ("result", "error")


def encode(event: QueuedEvent | StartedEvent | ProgressEvent | PreviewEvent | OutputEvent) -> bytes:
    """One SSE message for an intermediate event (final ones: `encode_final`)."""
    data = to_json(event.model_dump(exclude_none=True, exclude={"event"}))
    return b"event: " + event.event.encode() + b"\ndata: " + data + b"\n\n"


def encode_error(body: dict[str, Any], http_status: int) -> bytes:
    return b"event: error\ndata: " + to_json({**body, "http_status": http_status}) + b"\n\n"


def result_parts(body_parts: list[Any]) -> list[Any]:
    """The `result` event around a success body already rendered as pieces (no joined copy)."""
    return [b"event: result\ndata: ", *body_parts, b"\n\n"]


def parse(name: str, data: str) -> Any:
    """A typed event from one SSE message; ValueError when it is not one of ours."""
    payload = json.loads(data)
    if not isinstance(payload, dict):
        raise ValueError(f"event {name!r} carries no JSON object")
    if name == "result":
        return ResultEvent(response=GenerateResponse.model_validate(payload))
    if name == "error":
        status = payload.pop("http_status", 500)
        return ErrorEvent(http_status=int(status), failure=FailureResponse.model_validate(payload))
    return _EVENT.validate_python({**payload, "event": name})


class SSEDecoder:
    """Incremental SSE reader: feed bytes as they arrive, get (event, data) messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline (a big result is one line)
        self._event = "message"
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._scanned = 0
            if not line:
                if self._data:
                    yield self._event, b"\n".join(self._data).decode("utf-8", "replace")
                self._event, self._data = "message", []
            elif line.startswith(b":"):
                continue
            else:
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif field == b"data":
                    self._data.append(value)
