"""The live progress line of `comfy-worker call --progress`, drawn from stream events.

One line on a terminal, redrawn in place: the queue position while waiting, then a bar
of the prompt's overall fraction with the node being run and its step. Nothing is drawn
when the stream is not a terminal (a pipe, a log file, CI), so output stays clean.
"""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from comfy_bridge.jobs import stream_protocol as sp

_BAR_WIDTH = 24


class ProgressBar:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = False

    def update(self, event: Any) -> None:
        """Redraw for one stream event (final events just end the line)."""
        if not self.enabled:
            return
        line = render(event)
        if line is None:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def render(event: Any) -> str | None:
    """The progress line an event shows, or None for events that change nothing."""
    text = describe(event)
    if text is None or isinstance(event, sp.QueuedEvent):
        return text
    if isinstance(event, sp.ProgressEvent):
        fraction = event.fraction
    else:
        fraction = 0.0 if isinstance(event, sp.StartedEvent) else 1.0
    return f"{_bar(fraction)} {text}"


def describe(event: Any) -> str | None:
    """What an event says, in words (also the MCP server's progress messages)."""
    if isinstance(event, sp.QueuedEvent):
        ahead = "?" if event.position is None else str(event.position)
        return f"queued: {ahead} ahead in ComfyUI's queue"
    if isinstance(event, sp.StartedEvent):
        return "started"
    if isinstance(event, sp.ProgressEvent):
        if event.node is None:
            return "every node ran; delivering outputs"
        node = f"node {event.node} ({event.node_type})" if event.node_type else f"node {event.node}"
        step = f" step {event.value:g}/{event.max:g}" if event.value is not None and event.max else ""
        return f"{node}{step}"
    if isinstance(event, sp.OutputEvent):
        return f"delivered {event.output.filename}"
    if isinstance(event, sp.ResultEvent):
        return f"done in {event.response.timings.total_ms / 1000:.1f}s"
    return None


def _bar(fraction: float) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * _BAR_WIDTH))
    return f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {fraction * 100:3.0f}%"
