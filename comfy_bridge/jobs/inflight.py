"""The runs in flight on this bridge, by request_id: a resend joins, a reuse is refused.

A backend resends a request with the same `request_id` when it cannot tell whether the
first try arrived (worker/client.py does). While that request still runs here, running it
again would spend a second GPU run and, worse, let two runs share one name. So:

- the same request again (same canonical payload hash, `fingerprint`) joins the run in
  flight: one GPU run, every caller gets its answer (the same prompt_id);
- another payload under an in-flight request_id gets 409 `request_id_in_use`.

The shared run is cancelled only when every caller waiting on it has gone (a caller that
leaves must not stop the run another caller still waits for). Once a run ends its entry
goes: a later request with that request_id is a new run with its own folders and keys
(`JobInput.run_id`, comfy_bridge/schemas/job.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from pydantic import SecretStr

from comfy_bridge import logs
from comfy_bridge.errors import RequestIdInUse
from comfy_bridge.schemas.job import JobInput

log = logs.get(__name__)

T = TypeVar("T")

# Fields that may differ between a request and its resend: the remaining deadline shrinks
# as a client retries, and request_id is the key itself.
_NOT_PAYLOAD = {"request_id", "timeout_s"}


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):  # two requests with other credentials are other requests
        return value.get_secret_value()
    raise TypeError(f"cannot hash a {type(value).__name__}")


def _digest(job: JobInput) -> str:
    body = json.dumps(
        job.model_dump(exclude=_NOT_PAYLOAD), sort_keys=True, separators=(",", ":"), default=_reveal
    )
    return hashlib.sha256(body.encode()).hexdigest()


async def fingerprint(job: JobInput) -> str:
    """SHA-256 of the canonical JSON of the request (keys sorted), off the event loop."""
    return await asyncio.to_thread(_digest, job)


@dataclass
class _Run:
    fingerprint: str
    task: asyncio.Future[Any]
    waiters: int = 0


class InflightRuns:
    """request_id -> the run in flight for it; `run` starts one or joins it."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    async def run(self, job: JobInput, start: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(the run's result, whether this caller joined a run already in flight)."""
        digest = await fingerprint(job)
        entry = self._runs.get(job.request_id)
        joined = entry is not None
        if entry is None:
            entry = _Run(digest, asyncio.ensure_future(start()))
            self._runs[job.request_id] = entry
            entry.task.add_done_callback(lambda _t, rid=job.request_id, e=entry: self._ended(rid, e))
        elif entry.fingerprint != digest:
            raise RequestIdInUse(
                f"request_id {job.request_id!r} is in use by another request still running on this "
                "worker, with a different payload; send this one with a fresh request_id (a resend "
                "of the same request joins the run in flight)",
                request_id=job.request_id,
            )
        else:
            log.info("same request resent while in flight: joining its run",
                     extra={"fields": {"request_id": job.request_id, "callers": entry.waiters + 1}})
        entry.waiters += 1
        try:
            return await asyncio.shield(entry.task), joined
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.task.cancel()  # the last caller left (cancelled): stop the run

    def _ended(self, request_id: str, entry: _Run) -> None:
        if self._runs.get(request_id) is entry:
            del self._runs[request_id]
        if not entry.task.cancelled():
            entry.task.exception()  # retrieved: each caller got it already
