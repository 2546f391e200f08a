"""A request's live events: ComfyUI's websocket messages turned into stream events.

JobRunner.run(job, events=sink) tells the sink when each submission starts
(`watch`, before POST /prompt so no early message is missed), when ComfyUI accepted
it (`submitted`) and what was delivered (`delivered`). The sink subscribes to that
prompt's messages on the shared websocket (ComfyClient.subscribe) and queues
`queued` / `started` / `progress` / `preview` / `output` events (stream_protocol.py)
for the route (streaming.py) to write. Everything here runs on the reader task or in
short tasks of its own and never blocks the socket every request shares.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import weakref
from typing import Any

from comfy_bridge import logs
from comfy_bridge.comfyui import events as ev
from comfy_bridge.comfyui import graph as graphs
from comfy_bridge.comfyui.client import ComfyClient
from comfy_bridge.errors import BridgeError
from comfy_bridge.schemas.job import JobInput, OutputFile
from comfy_bridge.jobs.stream_protocol import (
    OutputEvent,
    PreviewEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
)
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

Event = QueuedEvent | StartedEvent | ProgressEvent | PreviewEvent | OutputEvent
# Safety net while waiting in ComfyUI's queue: re-read /queue this often even if no
# `status` broadcast said it moved.
_QUEUE_POLL_S = 5.0


class StreamSink:
    """The events of one request, in order, for one reader (`get`)."""

    def __init__(self, job: JobInput, client: ComfyClient, settings: BridgeSettings) -> None:
        self.job = job
        self.client = client
        self.settings = settings
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        event.request_id = self.job.request_id
        self.queue.put_nowait(event)

    def close(self) -> None:
        """No more events (the run is over): the reader's `get` returns None."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        self.queue.put_nowait(None)

    def watch(self, prompt_id: str, graph: dict[str, Any]) -> "PromptWatch":
        return PromptWatch(self, prompt_id, graph)

    def delivered(self, outputs: list[OutputFile]) -> None:
        """One `output` event per output that went to its destination (not inline data)."""
        for out in outputs:
            if out.data is None and (out.url or out.s3_key):
                self.emit(OutputEvent(output=out))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class PromptWatch:
    """One submission's subscription: queue position, start, per-node progress, previews."""

    def __init__(self, sink: StreamSink, prompt_id: str, graph: dict[str, Any]) -> None:
        self.sink = sink
        self.prompt_id = prompt_id
        self.graph = graph
        self.total = max(1, len(_executed_nodes(graph, sink.client)))
        self.done: set[str] = set()
        self.current: str | None = None
        self.queued_sent = False
        self.started = False
        self.position: int | None = None
        self.queue_moved = asyncio.Event()
        self.previews = sink.job.previews
        self.preview_busy = False
        self.last_preview = 0.0
        self._unsubscribe = sink.client.subscribe(prompt_id, self._on_message)

    def submitted(self) -> None:
        """ComfyUI accepted the prompt: follow its place in the queue until it starts."""
        self.sink.spawn(self._follow_queue())

    def close(self) -> None:
        self._unsubscribe()
        self.started = True  # ends _follow_queue
        self.queue_moved.set()

    # ---- messages (on the websocket reader task) ------------------------------------------

    def _on_message(self, msg: ev.Event | ev.BinaryFrame) -> None:
        if isinstance(msg, ev.BinaryFrame):
            self._on_frame(msg)
            return
        kind = msg.type
        if kind == ev.STATUS:
            self.queue_moved.set()
        elif kind == ev.EXECUTION_START:
            self._start()
        elif kind == ev.EXECUTION_CACHED:
            nodes = msg.data.get("nodes")
            if isinstance(nodes, list):
                self.done.update(str(n) for n in nodes if str(n) in self.graph)
        elif kind == ev.EXECUTING:
            self._start()
            if self.current is not None:
                self.done.add(self.current)
            self.current = msg.node
            if msg.node is not None:
                self._progress(msg.node, None, None)
        elif kind == ev.PROGRESS:
            node = msg.data.get("node")
            value, top = msg.data.get("value"), msg.data.get("max")
            if isinstance(value, (int, float)) and isinstance(top, (int, float)) and top > 0:
                self._progress(str(node) if node is not None else self.current, float(value), float(top))
        elif kind == ev.EXECUTED:
            node = msg.node
            if node is not None:
                self.done.add(node)
        elif kind == ev.EXECUTION_SUCCESS:  # every node ran or came from the cache
            self.sink.emit(ProgressEvent(prompt_id=self.prompt_id, fraction=1.0))

    def _start(self) -> None:
        if self.started:
            return
        if not self.queued_sent:  # it started before /queue answered: it waited behind nobody
            self._queued(0)
        self.started = True
        self.queue_moved.set()
        self.sink.emit(StartedEvent(prompt_id=self.prompt_id))

    def _progress(self, node: str | None, value: float | None, top: float | None) -> None:
        done = len(self.done - {node})
        part = min(value / top, 1.0) if value is not None and top else 0.0
        fraction = min(1.0, (done + part) / self.total)
        node_type = self.graph.get(node, {}).get("class_type") if node is not None else None
        self.sink.emit(ProgressEvent(
            prompt_id=self.prompt_id, node=node, node_type=node_type, value=value, max=top,
            fraction=round(fraction, 4),
        ))

    def _queued(self, position: int | None) -> None:
        self.queued_sent = True
        self.position = position
        self.sink.emit(QueuedEvent(prompt_id=self.prompt_id, position=position))

    # ---- the queue position ---------------------------------------------------------------

    async def _follow_queue(self) -> None:
        while not self.started:
            self.queue_moved.clear()
            try:
                position = _position(await _shared_queue(self.sink.client), self.prompt_id)
            except BridgeError:
                position = self.position
            if self.started:
                return
            if not self.queued_sent or (position is not None and position != self.position):
                self._queued(position)
            try:
                await asyncio.wait_for(self.queue_moved.wait(), _QUEUE_POLL_S)
            except asyncio.TimeoutError:
                pass

    # ---- latent previews ------------------------------------------------------------------

    def _on_frame(self, frame: ev.BinaryFrame) -> None:
        if not self.previews or frame.event not in (ev.BIN_PREVIEW_IMAGE, ev.BIN_PREVIEW_IMAGE_WITH_METADATA):
            return
        node = frame.node_id or self.current
        tracker = self.sink.client.tracker(self.prompt_id)
        if tracker is not None and node in tracker.capture_nodes:
            return  # a SaveImageWebsocket output, not a preview
        now = time.monotonic()
        if self.preview_busy or now - self.last_preview < self.sink.settings.stream_preview_interval_s:
            return
        self.preview_busy, self.last_preview = True, now
        self.sink.spawn(self._preview(node, frame.payload))

    async def _preview(self, node: str | None, payload: bytes) -> None:
        try:
            jpeg = await asyncio.to_thread(small_jpeg, payload, self.sink.settings.stream_preview_max_px)
        except Exception as exc:  # a frame Pillow cannot read: skip it, keep streaming
            log.debug("preview frame skipped: %s", exc)
            return
        finally:
            self.preview_busy = False
        if not self.sink.closed:
            self.sink.emit(PreviewEvent(prompt_id=self.prompt_id, node=node, data=base64.b64encode(jpeg).decode()))


def small_jpeg(payload: bytes, max_px: int, quality: int = 75) -> bytes:
    """Any image Pillow reads, as a JPEG no larger than max_px a side (blocking: use a thread)."""
    from PIL import Image

    with Image.open(io.BytesIO(payload)) as img:
        img = img.convert("RGB")
        img.thumbnail((max_px, max_px))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
    return out.getvalue()


_queue_reads: "weakref.WeakKeyDictionary[ComfyClient, asyncio.Future[dict[str, Any]]]" = weakref.WeakKeyDictionary()


async def _shared_queue(client: ComfyClient) -> dict[str, Any]:
    """GET /queue, one call shared by every stream that asks meanwhile: each `status`
    broadcast wakes all waiting streams at once, and /queue carries every queued graph."""
    read = _queue_reads.get(client)
    if read is None or read.done():
        read = asyncio.ensure_future(client.queue())
        read.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if all left
        _queue_reads[client] = read
    return await asyncio.shield(read)


def _position(queue: dict[str, Any], prompt_id: str) -> int | None:
    """Prompts ahead of `prompt_id` in a /queue answer (running + pending with a lower
    number); None when it is in neither list."""
    running = [i for i in queue.get("queue_running", []) if isinstance(i, list) and len(i) > 1]
    pending = [i for i in queue.get("queue_pending", []) if isinstance(i, list) and len(i) > 1]
    if any(i[1] == prompt_id for i in running):
        return 0
    mine = next((i for i in pending if i[1] == prompt_id), None)
    if mine is None:
        return None
    ahead = [i for i in pending if isinstance(i[0], (int, float)) and i[0] < mine[0]]
    return len(running) + len(ahead)


def _executed_nodes(graph: dict[str, Any], client: ComfyClient) -> set[str]:
    """Nodes ComfyUI will run: output nodes and what they depend on (all when unknown)."""
    outputs = [nid for nid, n in graph.items() if (client.node_info(n.get("class_type", "")) or {}).get("output_node")]
    if not outputs:
        return set(graph)
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        stack.extend(str(v[0]) for v in (graph[nid].get("inputs") or {}).values() if graphs.is_link(v))
    return seen
