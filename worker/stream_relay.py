"""The PyWorker's `/generate/stream` relay: the bridge's Server-Sent Events, passed on as they come.

The framework forwards the signed request to the bridge's `/generate/stream` (same
payload, same workload units as `/generate/sync`) and hands the response here. A JSON
answer (a failure found before anything was submitted) goes through the sync relay
(pyworker.make_relay). An event stream is written to the caller chunk by chunk as it
arrives, never buffered, so the first event reaches the caller while the prompt runs.

The stream always starts with HTTP 200, so the status honest_metrics.py reports is
read from the stream itself: 200 after a `result` event, the `http_status` of an
`error` event, and 502 if the bridge's stream ended without either. Only event names
and `error` bodies are kept while scanning; a multi-MB `result` line passes through,
gaining `cost` on the way as the sync answer does (worker/cost.py: the splicer holds
back only the tail of that last event, so no earlier event waits).
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from aiohttp import ClientResponse, web

from comfy_bridge.jobs import stream_protocol as sp
from worker import honest_metrics
from worker.cost import CostSplicer

ROUTE = sp.ROUTE
# A line longer than this is only kept while it belongs to an `error` event.
_KEEP_LINE_BYTES = 4096

Relay = Callable[[web.Request, ClientResponse], Awaitable[web.StreamResponse]]


class FinalStatusScanner:
    """Follows SSE lines across chunks to find the final event and, for `error`, its body."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.error_body: bytes = b""
        self.result_at: int | None = None  # in the last chunk fed: where the `result` event's data starts
        self._event = b""
        self._partial = bytearray()
        self._partial_dropped = False

    def feed(self, chunk: bytes) -> int | None:
        """Scan a chunk; returns `result_at` when the `result` event's name line ended in it."""
        start = 0
        self.result_at = None
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._hold(chunk[start:])
                return self.result_at
            self._hold(chunk[start:end])
            line = bytes(self._partial).rstrip(b"\r")
            dropped = self._partial_dropped
            self._partial.clear()
            self._partial_dropped = False
            start = end + 1
            self._line(line, dropped)
            if self._event == b"result" and line.startswith(b"event:"):
                self.result_at = start

    def _hold(self, piece: bytes) -> None:
        if self._partial_dropped:
            return
        self._partial += piece
        if len(self._partial) > _KEEP_LINE_BYTES and self._event != b"error":
            head = bytes(self._partial[:16])
            self._partial.clear()
            self._partial += head  # enough to tell `event:` from `data:`
            self._partial_dropped = True

    def _line(self, line: bytes, dropped: bool) -> None:
        if not line:
            self._event = b""
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        elif line.startswith(b"data:") and self._event == b"result":
            self.status = 200  # the whole line arrived (a stream cut inside it stays 502)
        elif line.startswith(b"data:") and self._event == b"error" and not dropped:
            self.error_body = line[5:].strip()
            try:
                self.status = int(json.loads(self.error_body).get("http_status", 500))
            except (ValueError, AttributeError, TypeError):
                self.status = 500


def make_stream_relay(
    sync_relay: Relay, on_failure: Callable[[bytes], None], gpu_price_per_hour: float | None = None,
) -> Relay:
    """The response generator of `/generate/stream`; `on_failure(body)` sees an `error` event's body."""

    async def relay(client_request: web.Request, model_response: ClientResponse) -> web.StreamResponse:
        if model_response.content_type != sp.CONTENT_TYPE:
            return await sync_relay(client_request, model_response)
        scanner = FinalStatusScanner()
        try:
            resp = web.StreamResponse(status=model_response.status, headers={
                "Content-Type": sp.CONTENT_TYPE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            })
            await resp.prepare(client_request)
            splicer: CostSplicer | None = None
            async for chunk in model_response.content.iter_any():
                at = scanner.feed(chunk)
                if splicer is None and at is not None:  # the rest of the stream is the result event
                    await resp.write(chunk[:at])
                    splicer, chunk = CostSplicer(gpu_price_per_hour), chunk[at:]
                if splicer is None:
                    await resp.write(chunk)
                elif out := splicer.feed(chunk):
                    await resp.write(out)
            if splicer is not None:  # the splicer drops the blank line that ends the event: put it back
                await resp.write(splicer.finish() + (b"\n\n" if scanner.status == 200 else b""))
            await resp.write_eof()
            return resp
        finally:
            status = scanner.status if scanner.status is not None else 502
            honest_metrics.note_status(status)
            if scanner.error_body:
                on_failure(scanner.error_body)
            model_response.release()

    return relay
