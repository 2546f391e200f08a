"""Spooled outputs go to S3 after all, once it answers again; the webhook is then told.

When an upload fails for good during a request (S3 down, a network split), the file is
moved to the spool (comfy_bridge/delivery/spool.py) and the caller gets 502 with inline
copies where small enough. The run is then handed here: each spooled file is re-uploaded
in the background under the key it would have had, with the retry policy (comfy_bridge/retry.py:
S3_RETRY_BACKOFF_S first, doubling, capped at COMFY_BRIDGE_REDELIVER_MAX_BACKOFF_S, for
COMFY_BRIDGE_REDELIVER_FOR_S), and removed from the spool once stored. When every file of
the run is stored, the request's webhook gets `{id, status: "success", event:
"redelivered", output: [...with url and s3_key]}`. Errors no retry can fix (bad
credentials, no such bucket, a file evicted from the spool by its budget) stop at once.
Pending work lives in memory (a request's credentials are never written to disk): files
left on the spool by a restart are only fetchable (comfy_bridge/delivery/fetch_routes.py).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable


from comfy_bridge import logs
from comfy_bridge.delivery.spool import Spool
from comfy_bridge.schemas.job import JobInput, OutputFile
from comfy_bridge.retry import RetryPolicy
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

# (spooled path, s3 key, mimetype) -> presigned URL
Upload = Callable[[Path, str, str], Awaitable[str]]
Notify = Callable[[JobInput, dict[str, Any]], Any]


@dataclass
class Pending:
    """One spooled file and where it goes."""

    path: Path
    key: str
    output: OutputFile  # the entry the caller got (upload_error set)


class Redeliveries:
    """The background re-uploads of one bridge; `notify` is its webhook sender's `schedule`."""

    def __init__(self, spool: Spool, *, first_backoff_s: float, max_backoff_s: float, for_s: float) -> None:
        self.spool = spool
        self.first_backoff_s = max(first_backoff_s, 0.01)
        self.max_backoff_s = max_backoff_s
        self.for_s = for_s
        self.notify: Notify | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def add(self, job: JobInput, items: list[Pending], upload: Upload,
            permanent: Callable[[BaseException], bool]) -> None:
        """Re-upload `items` in the background until stored, given up, or closed."""
        if not items:
            return
        task = asyncio.get_running_loop().create_task(
            self._redeliver(job, items, upload, permanent), name=f"redeliver-{job.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _redeliver(self, job: JobInput, items: list[Pending], upload: Upload,
                         permanent: Callable[[BaseException], bool]) -> None:
        with logs.bind(request_id=job.request_id):
            log.info("S3 upload failed: %d spooled output(s) will be re-uploaded in the background", len(items))
            results = await asyncio.gather(*(self._one(item, upload, permanent) for item in items))
            delivered = [r for r in results if r is not None]
            if len(delivered) < len(items):
                log.error("%d of %d spooled output(s) could not be re-uploaded; they stay on the spool",
                          len(items) - len(delivered), len(items))
                return
            log.info("spooled outputs re-uploaded to S3", extra={"fields": {"outputs": len(delivered)}})
            if self.notify is not None and job.webhook is not None:
                body = {"id": job.request_id, "status": "success", "event": "redelivered",
                        "output": [o.model_dump(mode="json", exclude_none=True) for o in delivered]}
                try:
                    result = self.notify(job, body)
                    if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("could not send the redelivery webhook")

    async def _one(self, item: Pending, upload: Upload,
                   permanent: Callable[[BaseException], bool]) -> OutputFile | None:
        def retriable(exc: BaseException) -> bool:
            # tenacity sees every BaseException: a cancellation must end the loop, not retry.
            if not isinstance(exc, Exception):
                return False
            return item.path.exists() and not permanent(exc)

        try:
            policy = RetryPolicy(first_s=self.first_backoff_s, cap_s=self.max_backoff_s, deadline_s=self.for_s,
                                 retry_on=retriable, what=f"re-upload of {item.output.filename}", log=log)
            async for attempt in policy.retrying():
                with attempt:
                    if not item.path.exists():
                        raise FileNotFoundError(f"{item.key}: evicted from the spool by its budget")
                    url = await upload(item.path, item.key, item.output.mimetype)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - given up: logged, the file stays fetchable
            log.error("re-upload of %s given up: %s: %s", item.output.filename, type(exc).__name__,
                      logs.redact(str(exc))[:300])
            return None
        await asyncio.to_thread(self.spool.discard, item.path)
        return item.output.model_copy(update={"url": url, "s3_key": item.key, "data": None,
                                              "upload_error": None, "spool_key": None})

    async def drain(self) -> None:
        """Wait for every re-upload to end (tests; a shutdown cancels them with aclose)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop re-uploading; the files stay on the spool."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# One per settings object: the S3 destination, the inline one and the bridge's routes share it.
_shared: dict[int, tuple[weakref.ref[BridgeSettings], Redeliveries]] = {}


def shared(settings: BridgeSettings) -> Redeliveries:
    """The Redeliveries (and spool) of the bridge built from `settings`."""
    entry = _shared.get(id(settings))
    if entry is not None and entry[0]() is settings:
        return entry[1]
    made = Redeliveries(
        Spool(settings.spool_dir, settings.spool_budget_bytes),
        first_backoff_s=settings.s3.retry_backoff_s,
        max_backoff_s=settings.redeliver_max_backoff_s,
        for_s=settings.redeliver_for_s,
    )
    _shared[id(settings)] = (weakref.ref(settings), made)
    weakref.finalize(settings, _shared.pop, id(settings), None)
    return made
