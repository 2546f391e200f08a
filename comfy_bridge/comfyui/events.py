"""ComfyUI websocket messages: the few the bridge acts on, parsed without surprises.

Text frames are JSON `{"type", "data"}`; binary frames start with a big-endian uint32
event type (1 preview image, 3 text, 4 preview image with JSON metadata). Parsing never
raises: a frame we do not understand is returned as an `Event` of its own type (or None
for garbage) so one odd custom node cannot kill the reader that every request waits on.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

# Message types of ComfyUI v0.3.x, as recorded in tests/fixtures/comfyui-protocol/.
STATUS = "status"
EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
EXECUTED = "executed"
PROGRESS = "progress"
PROGRESS_STATE = "progress_state"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"

# Binary event types (protocol.BinaryEventTypes) and the image types of event 1.
BIN_PREVIEW_IMAGE = 1
BIN_TEXT = 3
BIN_PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


@dataclass(slots=True)
class Event:
    """One text message. `prompt_id` is lifted out of `data` when present."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_id(self) -> str | None:
        pid = self.data.get("prompt_id")
        return pid if isinstance(pid, str) else None

    @property
    def node(self) -> str | None:
        """`executing`'s node; None there means the prompt is finished and in /history."""
        node = self.data.get("node")
        return None if node is None else str(node)


@dataclass(slots=True)
class BinaryFrame:
    """A binary message: an image (preview or SaveImageWebsocket output) or node text."""

    event: int
    payload: bytes
    mimetype: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_id(self) -> str | None:
        pid = self.metadata.get("prompt_id")
        return pid if isinstance(pid, str) else None

    @property
    def node_id(self) -> str | None:
        node = self.metadata.get("node_id")
        return None if node is None else str(node)


def parse_text(raw: str | bytes) -> Event | None:
    """A text frame, or None when it is not a JSON object with a string `type`."""
    try:
        msg = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None
    data = msg.get("data")
    return Event(msg["type"], data if isinstance(data, dict) else {})


def parse_binary(raw: bytes) -> BinaryFrame | None:
    """A binary frame, or None when it is too short to carry an event type."""
    if len(raw) < 4:
        return None
    (event,) = struct.unpack_from(">I", raw, 0)
    body = raw[4:]
    if event == BIN_PREVIEW_IMAGE and len(body) >= 4:
        (image_type,) = struct.unpack_from(">I", body, 0)
        return BinaryFrame(event, body[4:], _IMAGE_TYPES.get(image_type))
    if event == BIN_PREVIEW_IMAGE_WITH_METADATA and len(body) >= 4:
        (meta_len,) = struct.unpack_from(">I", body, 0)
        meta_raw = body[4 : 4 + meta_len]
        try:
            meta = json.loads(meta_raw) if meta_len else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        mimetype = meta.get("image_type") if isinstance(meta.get("image_type"), str) else None
        return BinaryFrame(event, body[4 + meta_len :], mimetype, meta)
    if event == BIN_TEXT and len(body) >= 4:
        (id_len,) = struct.unpack_from(">I", body, 0)
        node_id = body[4 : 4 + id_len].decode("utf-8", "replace")
        return BinaryFrame(event, body[4 + id_len :], "text/plain", {"node_id": node_id})
    return BinaryFrame(event, body)


def history_timestamps(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """(start, end) epoch-ms from a /history entry's status messages.

    Used when the websocket missed the live events (a reconnect), so timings still
    report ComfyUI's own execution time.
    """
    start = end = None
    status = entry.get("status") if isinstance(entry, dict) else None
    messages = status.get("messages") if isinstance(status, dict) else None
    for item in messages if isinstance(messages, list) else []:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        kind, data = item
        ts = data.get("timestamp")
        if not isinstance(ts, (int, float)):
            continue
        if kind == EXECUTION_START:
            start = int(ts)
        elif kind in (EXECUTION_SUCCESS, EXECUTION_ERROR, EXECUTION_INTERRUPTED):
            end = int(ts)
    return start, end


def history_failure(entry: dict[str, Any]) -> Event | None:
    """The execution_error / execution_interrupted message recorded in a /history entry."""
    status = entry.get("status") if isinstance(entry, dict) else None
    messages = status.get("messages") if isinstance(status, dict) else None
    for item in messages if isinstance(messages, list) else []:
        if (
            isinstance(item, list)
            and len(item) == 2
            and item[0] in (EXECUTION_ERROR, EXECUTION_INTERRUPTED)
            and isinstance(item[1], dict)
        ):
            return Event(item[0], item[1])
    if isinstance(status, dict) and status.get("status_str") == "error":
        return Event(EXECUTION_ERROR, {"exception_message": "ComfyUI reported an error"})
    return None
