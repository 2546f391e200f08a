"""One prompt as the websocket reader follows it (`PromptTracker`) and what it left (`PromptResult`).

Fed by comfy_bridge/comfyui/client.py's reader; the job runner reads a PromptResult's
outputs, failure and timings (comfy_bridge/jobs/serving.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from comfy_bridge.comfyui import events as ev

ProgressCallback = Callable[[ev.Event], None]


@dataclass
class PromptResult:
    """What a finished prompt left: its /history entry, failure (if any) and timings."""

    prompt_id: str
    outputs: dict[str, Any]
    failure: ev.Event | None
    queued_ms: float
    execution_ms: float
    ws_images: list[tuple[str, ev.BinaryFrame]] = field(default_factory=list)


@dataclass
class PromptTracker:
    """Per-prompt state fed by the websocket reader; its future resolves exactly once."""

    prompt_id: str
    future: asyncio.Future[None]
    on_progress: ProgressCallback | None = None
    capture_nodes: frozenset[str] = frozenset()
    submitted: bool = False
    submitted_at: float = 0.0
    started_at: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    failure: ev.Event | None = None
    history: dict[str, Any] | None = None
    current_node: str | None = None
    # Monotonic time of this prompt's latest websocket event: the silence watchdog's clock.
    last_event_at: float = 0.0
    ws_images: list[tuple[str, ev.BinaryFrame]] = field(default_factory=list)
    # Each node's `executed` output (the same dict /history lists under "outputs").
    outputs: dict[str, Any] = field(default_factory=dict)
    # The socket dropped while this prompt was tracked: events may be missing, ask /history.
    events_missed: bool = False

    @property
    def complete_from_events(self) -> bool:
        """`executing: null`, a terminal event with its timestamp, nothing missed."""
        return self.future.done() and not self.events_missed and self.end_ms is not None

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def finish(self) -> bool:
        if self.future.done():
            return False
        self.future.set_result(None)
        return True

    def fail(self, exc: BaseException) -> bool:
        if self.future.done():
            return False
        self.future.set_exception(exc)
        self.future.exception()  # marks it retrieved: nobody may be waiting any more
        return True
