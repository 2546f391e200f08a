"""ComfyClient: one HTTP session and one websocket per client_id, shared by all requests.

ComfyUI sends a prompt's events only to the websocket of the client_id that submitted
it, so one persistent socket serves every request: a reader task dispatches each event
to the PromptTracker of its prompt_id. We choose prompt_ids ourselves, so a tracker
exists before POST /prompt and no early event is lost.

A prompt is finished when ComfyUI sends `executing` with `node: null` for it. Its outputs
are what each output node's `executed` message listed (ComfyUI sends one for cached nodes
too, see tests/fixtures/comfyui-protocol/cached_resubmit.json) and its timings come from
execution_start and the terminal event, so a request ends without a /history round trip:
nothing after the end waits on ComfyUI, whose periodic gc pause lands right there. /history
is read only to reconcile: the socket dropped while the prompt was tracked (the reader
reconnects with backoff and settles every in-flight prompt against /queue and /history,
exactly once), the watchdog probes a silent prompt, or the events were incomplete.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Callable

import aiohttp

from comfy_bridge import logs
from comfy_bridge.comfyui import events as ev
from comfy_bridge.comfyui import graph as graphs
from comfy_bridge.comfyui.reconcile import settle_missed
from comfy_bridge.comfyui.rest import ComfyRest
from comfy_bridge.comfyui.tracker import ProgressCallback, PromptResult, PromptTracker
from comfy_bridge.errors import BridgeError, ComfyUnavailable
from comfy_bridge.retry import RetryPolicy

log = logs.get(__name__)

# A subscriber to one prompt's messages (comfy_bridge/jobs/streaming.py): its text events,
# its binary frames (previews), and every `status` broadcast (the queue moved).
EventListener = Callable[[ev.Event | ev.BinaryFrame], None]


class ComfyClient(ComfyRest):
    """Async client of one ComfyUI server. Call `start()` once, `close()` at the end."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 60.0,
        heartbeat_s: float = 20.0,
        reconnect_max_s: float = 2.0,
        down_grace_s: float = 15.0,
        poll_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or f"cvw-{uuid.uuid4().hex}"
        self._ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._heartbeat_s = heartbeat_s
        self._reconnect_max_s = reconnect_max_s
        self._down_grace_s = down_grace_s
        self._poll_s = poll_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ws_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._connections = 0
        self._trackers: dict[str, PromptTracker] = {}
        self._current_prompt: str | None = None
        self._object_info: dict[str, Any] = {}
        self._object_info_loaded = False
        self._background: set[asyncio.Task[Any]] = set()
        # ComfyUI's own queue length (every client's prompts) from its `status` broadcasts.
        self._queue_remaining: int | None = None
        self._listeners: dict[str, list[EventListener]] = {}

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session and start the reader; ComfyUI need not be up yet."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout_s, sock_read=self._request_timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(), name="comfy-ws-reader")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self.fail_inflight(ComfyUnavailable("the bridge is shutting down"))
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    @property
    def connections(self) -> int:
        """Websocket connections made so far (more than one: there were reconnects)."""
        return self._connections

    @property
    def inflight(self) -> int:
        return len(self._trackers)

    @property
    def queue_depth(self) -> int:
        """Prompts running or pending in ComfyUI: its last `status` broadcast while the
        socket is up, else the prompts this bridge is waiting for."""
        if self.connected and self._queue_remaining is not None:
            return self._queue_remaining
        return len(self._trackers)

    def fail_inflight(self, exc: BridgeError) -> int:
        """Wake every waiting prompt with `exc` (ComfyUI died); returns how many."""
        return sum(t.fail(exc) for t in list(self._trackers.values()))

    # ---- websocket ---------------------------------------------------------------------

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        async with self._ws_lock:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            assert self._session is not None, "call start() first"
            # No compression: ComfyUI would deflate every multi-MB image frame.
            self._ws = await self._session.ws_connect(
                self._ws_url,
                heartbeat=self._heartbeat_s,
                max_msg_size=0,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
            self._connections += 1
            self._object_info_loaded = False  # ComfyUI may have restarted with other nodes
            self._wake.set()
            return self._ws

    async def ensure_connected(self) -> None:
        """Connect now if the reader is between attempts; 503 when ComfyUI is not there."""
        if self.connected:
            return
        try:
            await asyncio.wait_for(self._connect(), self._connect_timeout_s)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise ComfyUnavailable(
                f"ComfyUI at {self.base_url} is not reachable ({type(exc).__name__}); "
                "it may be starting or restarting, retry shortly",
            ) from None

    async def _read_forever(self) -> None:
        reconnect = RetryPolicy(first_s=0.05, cap_s=self._reconnect_max_s)  # comfy_bridge/retry.py
        failures = 0
        down_since: float | None = None
        seen = 0
        while not self._closing:
            try:
                ws = await self._connect()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since >= self._down_grace_s and self._trackers:
                    n = self.fail_inflight(
                        ComfyUnavailable(f"lost ComfyUI for {now - down_since:.0f}s ({type(exc).__name__})")
                    )
                    if n:
                        log.warning("failed %d in-flight prompts: ComfyUI unreachable", n)
                self._wake.clear()
                failures += 1
                try:  # a submit wakes it early
                    await asyncio.wait_for(self._wake.wait(), reconnect.delay(failures))
                except asyncio.TimeoutError:
                    pass
                continue
            failures, down_since = 0, None
            if self._connections > 1 and self._connections != seen:
                log.info("websocket reconnected; reconciling %d prompts", len(self._trackers))
                now = time.monotonic()
                for t in self._trackers.values():  # a dead socket was silent, not the prompt
                    t.last_event_at = max(t.last_event_at, now)
                    t.events_missed = True
                self._spawn(self._reconcile())
            seen = self._connections
            try:
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
                    self._handle(msg)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            if not self._closing:
                log.warning("websocket to ComfyUI closed; reconnecting")
                await ws.close()

    def _handle(self, msg: aiohttp.WSMessage) -> None:
        try:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = ev.parse_text(msg.data)
                if event is not None:
                    self._dispatch(event)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                frame = ev.parse_binary(msg.data)
                if frame is not None:
                    self._dispatch_binary(frame)
        except Exception:  # one odd message must not cost every request its socket
            log.exception("could not handle a websocket message")

    def _dispatch(self, event: ev.Event) -> None:
        pid = event.prompt_id
        if event.type == ev.STATUS:
            self._note_status(event.data)
            for pid_listeners in list(self._listeners.values()):
                self._publish(pid_listeners, event)
            return
        if event.type == ev.EXECUTION_START and pid:
            self._current_prompt = pid
        if pid in self._listeners:
            self._publish(self._listeners[pid], event)
        tracker = self._trackers.get(pid) if pid else None
        if tracker is None:
            return
        tracker.last_event_at = time.monotonic()
        kind = event.type
        if kind == ev.EXECUTING:
            node = event.node
            if node is None:
                if self._current_prompt == pid:
                    self._current_prompt = None
                tracker.finish()
                return
            tracker.current_node = node
        elif kind == ev.EXECUTION_START:
            tracker.started_at = time.monotonic()
            tracker.start_ms = _ts(event.data)
        elif kind == ev.EXECUTED:
            output, node = event.data.get("output"), event.node
            if isinstance(output, dict) and node is not None:
                tracker.outputs[node] = output
        elif kind == ev.EXECUTION_SUCCESS:
            tracker.end_ms = _ts(event.data)
        elif kind in (ev.EXECUTION_ERROR, ev.EXECUTION_INTERRUPTED):
            tracker.end_ms = _ts(event.data) or int(time.time() * 1000)
            tracker.failure = event
        if tracker.on_progress is not None and kind in (
            ev.PROGRESS, ev.PROGRESS_STATE, ev.EXECUTING, ev.EXECUTION_START, ev.EXECUTED
        ):
            try:
                tracker.on_progress(event)
            except Exception:
                log.exception("progress callback failed")

    def _dispatch_binary(self, frame: ev.BinaryFrame) -> None:
        pid = frame.prompt_id or self._current_prompt
        if pid in self._listeners:
            self._publish(self._listeners[pid], frame)
        tracker = self._trackers.get(pid) if pid else None
        if tracker is None:
            return
        tracker.last_event_at = time.monotonic()
        if frame.event == ev.BIN_TEXT:
            return
        node = frame.node_id or tracker.current_node
        if node is not None and node in tracker.capture_nodes:
            tracker.ws_images.append((node, frame))

    def _note_status(self, data: dict[str, Any]) -> None:
        status = data.get("status")
        info = status.get("exec_info") if isinstance(status, dict) else None
        remaining = info.get("queue_remaining") if isinstance(info, dict) else None
        if isinstance(remaining, int) and remaining >= 0:
            self._queue_remaining = remaining

    async def reconcile(self, prompt_id: str) -> None:
        """Settle one prompt against /queue and /history (the watchdog found it silent)."""
        tracker = self._trackers.get(prompt_id)
        if tracker is not None:
            await self._reconcile(tracker)

    async def _reconcile(self, only: PromptTracker | None = None) -> None:
        """Settle prompts whose events we may have missed (a reconnect, a long silence)."""
        trackers = [only] if only is not None else list(self._trackers.values())
        await settle_missed(self, [t for t in trackers if t.submitted and not t.future.done()])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- per-prompt subscriptions (the streaming route) ------------------------------------

    def subscribe(self, prompt_id: str, listener: EventListener) -> Callable[[], None]:
        """Call `listener` with every message of `prompt_id` (and each status broadcast)
        from the reader task, until the returned function is called. It must not block."""
        self._listeners.setdefault(prompt_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(prompt_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(prompt_id, None)

        return unsubscribe

    @staticmethod
    def _publish(listeners: list[EventListener], message: ev.Event | ev.BinaryFrame) -> None:
        for listener in list(listeners):
            try:
                listener(message)
            except Exception:
                log.exception("event listener failed")

    # ---- prompts -----------------------------------------------------------------------

    def track(
        self,
        prompt_id: str,
        on_progress: ProgressCallback | None = None,
        capture_nodes: frozenset[str] = frozenset(),
    ) -> PromptTracker:
        tracker = self._trackers.get(prompt_id)
        if tracker is None:
            future = asyncio.get_running_loop().create_future()
            tracker = PromptTracker(prompt_id, future, on_progress, capture_nodes)
            self._trackers[prompt_id] = tracker
        return tracker

    def forget(self, prompt_id: str) -> None:
        tracker = self._trackers.pop(prompt_id, None)
        if tracker is not None and not tracker.future.done():
            tracker.future.cancel()

    def tracker(self, prompt_id: str) -> PromptTracker | None:
        return self._trackers.get(prompt_id)

    async def submit(
        self,
        graph: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        capture_nodes: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """POST /prompt with our prompt_id; ComfyUI's 400 raises WorkflowRejected & co."""
        await self.ensure_connected()
        tracker = self.track(prompt_id, on_progress, capture_nodes)
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id,
                "extra_data": extra_data or {}}
        tracker.submitted_at = time.monotonic()
        try:
            status, answer = await self._json("POST", "/prompt", json=body, ok=(200, 400))
        except BaseException:
            self.forget(prompt_id)
            raise
        if status == 400:
            self.forget(prompt_id)
            raise graphs.rejection(answer)
        tracker.submitted = True
        return answer if isinstance(answer, dict) else {}

    async def wait(self, prompt_id: str) -> PromptResult:
        """Until `executing: null` for the prompt; its outputs from the events, or from
        /history when the events may be incomplete (see the module docstring).

        Cancelling the wait leaves the prompt tracked (the caller may interrupt it and
        wait again); any other outcome forgets it.
        """
        tracker = self._trackers.get(prompt_id)
        if tracker is None:
            raise KeyError(f"prompt {prompt_id} is not tracked")
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(tracker.future), self._poll_s)
                    break
                except asyncio.TimeoutError:
                    # Safety net for a socket that silently stopped delivering events.
                    await self._reconcile(tracker)
            if tracker.history is not None:
                entry = tracker.history
            elif tracker.complete_from_events:
                entry = {"outputs": tracker.outputs}
            else:
                entry = await self._history_after_finish(prompt_id)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._trackers.pop(prompt_id, None)
            raise
        self._trackers.pop(prompt_id, None)
        if tracker.start_ms is None or tracker.end_ms is None:
            start, end = ev.history_timestamps(entry)
            tracker.start_ms, tracker.end_ms = tracker.start_ms or start, tracker.end_ms or end
        failure = tracker.failure or ev.history_failure(entry)
        execution_ms = float(tracker.end_ms - tracker.start_ms) if tracker.start_ms and tracker.end_ms else 0.0
        queued_ms = ((tracker.started_at or time.monotonic()) - tracker.submitted_at) * 1000
        outputs = entry.get("outputs")
        return PromptResult(
            prompt_id,
            outputs if isinstance(outputs, dict) else {},
            failure,
            queued_ms=max(queued_ms, 0.0),
            execution_ms=max(execution_ms, 0.0),
            ws_images=tracker.ws_images,
        )

    async def _history_after_finish(self, prompt_id: str) -> dict[str, Any]:
        delay = 0.002
        deadline = time.monotonic() + 5.0
        while True:
            entry = await self.history(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise ComfyUnavailable(
                    "ComfyUI finished the prompt but /history has no entry for it", prompt_id=prompt_id
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

def _ts(data: dict[str, Any]) -> int | None:
    ts = data.get("timestamp")
    return int(ts) if isinstance(ts, (int, float)) else None
