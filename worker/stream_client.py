"""WorkerClient.stream: one request through a worker's `/generate/stream`, as typed events.

Routing, backoff and the deadline are WorkerClient's (worker/client.py). Before the
stream starts, the same answers are retried as for `generate` (no worker ready, 429,
503, refused connections). Once events have started to arrive the request is running
somewhere: a broken stream is resent only when the input carries a `request_id`,
else ResultUnknown. The last event is a ResultEvent; an `error` event raises the
comfy_bridge error class it names (503 is retried, as `generate` retries it).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

import aiohttp
from pydantic import ValidationError

from comfy_bridge import logs
from comfy_bridge.jobs import stream_protocol as sp
from comfy_bridge.schemas.job import JobInput
from worker.call_outcome import CallError, Place, Retry, answer, failure_error, lost

if TYPE_CHECKING:
    from worker.client import WorkerClient

log = logs.get(__name__)


async def stream(
    client: WorkerClient, job: dict[str, Any] | JobInput, *, deadline_s: float, cost: float | None
) -> AsyncIterator[Any]:
    payload_input, idempotent = client._prepare(job)
    cost = client.workload.payload_units({"input": payload_input}) if cost is None else cost
    deadline = time.monotonic() + deadline_s
    place = Place()
    failures = 0
    # No logs.bind here: a context variable set in an async generator cannot be reset
    # when the generator is closed from another context (a caller that stops early).
    fields = {"request_id": payload_input.get("request_id")}
    while True:
        try:
            ticket = await client._route_until_ready(cost, place, deadline)
            async with contextlib.aclosing(_events(client, ticket, payload_input, deadline, idempotent)) as events:
                async for event in events:
                    yield event
            return
        except Retry as r:
            place.reason = r.reason
            failures += 1
            log.info("retrying: %s", r.reason, extra={"fields": fields})
            await client._backoff(failures, deadline, r.reason)


async def _events(
    client: WorkerClient, ticket: dict[str, Any], payload_input: dict[str, Any], deadline: float, idempotent: bool
) -> AsyncIterator[Any]:
    url, post = await client._open_worker(ticket, payload_input, deadline, sp.ROUTE)
    started = False
    try:
        async with post as r:
            async with contextlib.aclosing(read_events(r, url)) as events:
                async for event in events:
                    started = True
                    if isinstance(event, sp.ErrorEvent):
                        if event.http_status == 503:
                            raise Retry(f"worker {url} unavailable (503: {event.failure.error.message})")
                        raise failure_error(event.http_status, event.failure)
                    yield event
                    if isinstance(event, sp.ResultEvent):
                        return
    except (aiohttp.ClientError, TimeoutError) as e:
        raise lost(e, url, idempotent) from e
    # The stream ended without its final event: the worker or the bridge went away.
    raise lost(aiohttp.ServerDisconnectedError(
        f"stream ended before its result ({'after' if started else 'before'} the first event)"), url, idempotent)


async def read_events(r: aiohttp.ClientResponse, url: str) -> AsyncIterator[Any]:
    """Typed events of an event-stream answer; a JSON answer raises what it means
    (worker/call_outcome.py `answer`), so callers see one shape: events, or an exception."""
    if r.content_type != sp.CONTENT_TYPE:
        answer(url, r.status, await r.read())
        raise CallError(f"{url} answered {r.status} without an event stream")
    decoder = sp.SSEDecoder()
    async for chunk in r.content.iter_any():
        for name, data in decoder.feed(chunk):
            event = _parse(url, name, data)
            if event is not None:
                yield event


def _parse(url: str, name: str, data: str) -> Any:
    try:
        return sp.parse(name, data)
    except (ValueError, ValidationError) as e:
        if name in sp.FINAL_EVENTS:
            raise CallError(f"worker {url} sent a {name} event that does not parse: {e}") from e
        log.warning("skipped an event that does not parse: %s", name)
        return None
