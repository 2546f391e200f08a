"""The one retry policy: exponential backoff with full jitter, a cap, attempts, a deadline.

Every retry loop of the project (S3 uploads comfy_bridge/delivery/s3.py, webhooks
comfy_bridge/webhooks/sender.py, re-uploads comfy_bridge/delivery/redeliver.py, downloads
comfy_bridge/provision/file_download.py, the backend client worker/client.py and
worker/stream_client.py, ComfyUI reconnects comfy_bridge/comfyui/client.py) waits the
same way, configured per use from its own settings: retry n (1, 2, ...) waits a random
time in [0, min(cap_s, first_s * 2**(n-1))] ("full jitter": many clients that failed
together do not retry together), stops after `attempts` tries or before a wait would
pass `deadline_s`, retries only the exceptions `retry_on` accepts, and logs each retry
(the structured logs carry the bound request_id, comfy_bridge/logs.py).

tenacity does the looping (over stamina: it is already here for the Vast API's
Retry-After in worker/deploy/vast_api.py, takes a per-call predicate and wait, and has
asyncio support without a global on/off switch that tests would have to manage).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
)

from comfy_bridge import logs

_log = logs.get(__name__)


def _always(exc: BaseException) -> bool:
    return True


@dataclass(frozen=True)
class RetryPolicy:
    """How one use retries; `what` names it in logs ("upload of x.png", "webhook to ...")."""

    first_s: float
    cap_s: float
    attempts: int | None = None  # tries in all, the first included; None: until the deadline
    deadline_s: float | None = None  # no wait starts that would end past this many seconds
    retry_on: Callable[[BaseException], bool] = _always
    what: str = "operation"
    describe: Callable[[BaseException], str] = lambda exc: f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    on_retry: Callable[[BaseException], None] | None = None  # e.g. a retry counter metric
    log: logging.Logger = _log

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first retry)."""
        return random.uniform(0.0, min(self.cap_s, self.first_s * 2 ** min(retry - 1, 30)))

    def retrying(self) -> AsyncRetrying:
        """A tenacity loop (`async for attempt in policy.retrying(): with attempt: ...`)
        that re-raises the last error when it gives up. Cancellation is never retried."""
        stop: Any = stop_never
        if self.attempts is not None:
            stop = stop_after_attempt(max(1, self.attempts))
        if self.deadline_s is not None:
            before_deadline = stop_before_delay(self.deadline_s)
            stop = before_deadline if self.attempts is None else stop | before_deadline
        return AsyncRetrying(
            retry=retry_if_exception(lambda e: not isinstance(e, asyncio.CancelledError) and self.retry_on(e)),
            stop=stop,
            wait=lambda state: self.delay(state.attempt_number),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:
            return
        if self.on_retry is not None:
            self.on_retry(exc)
        of = f" of {self.attempts}" if self.attempts is not None else ""
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self.log.warning(
            "%s failed (attempt %d%s: %s), retrying in %.2fs",
            self.what, state.attempt_number, of, logs.redact(self.describe(exc)), wait,
        )

    async def sleep(self, retry: int, deadline: float | None = None) -> float:
        """For loops that retry on answers rather than exceptions (polling): wait the
        policy's delay before retry `retry`, never past the monotonic `deadline`."""
        wait = self.delay(retry)
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        await asyncio.sleep(wait)
        return wait
