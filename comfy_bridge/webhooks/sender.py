"""Posts each result to the request's `webhook.url`, signed, retried, and never in the way.

The synchronous response is the caller's answer; a webhook is a copy for a backend that
prefers callbacks. So `schedule` returns at once, the POST runs as its own task after the
response, and a slow or dead receiver costs the request nothing. Unlike a single
fire-and-forget call, a failed delivery (connection error, timeout, 408/425/429/5xx) is
retried by the project's policy (comfy_bridge/retry.py: exponential backoff with full
jitter): COMFY_BRIDGE_WEBHOOK_RETRIES (5) more attempts, waits up to
COMFY_BRIDGE_WEBHOOK_RETRY_BACKOFF_S (1 s) before the first, doubling, capped at 60 s; each
attempt times out after COMFY_BRIDGE_WEBHOOK_TIMEOUT_S (10 s). Other statuses are final.

Body: the response JSON (success or failure) with `extra_params` from the request added
under that key and the event `type` (`generation.succeeded`, `generation.failed`, or
`generation.redelivered` when spooled outputs reached S3 later, comfy_bridge/delivery/redeliver.py);
inline data only up to a cap (body.py). Signing: Standard Webhooks, see `signing.py`
(secret: `webhook.secret`, else COMFY_BRIDGE_WEBHOOK_SECRET); `webhook-id` is
`<request_id>.<type>`, the same on every retry, so a receiver can deduplicate.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel
from yarl import URL

from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.net.guard import AddressRefused, check_url, guarded_session, refused
from comfy_bridge.schemas.job import JobInput, WebhookTarget
from comfy_bridge.retry import RetryPolicy
from comfy_bridge.settings import BridgeSettings
from comfy_bridge.webhooks.body import capped
from comfy_bridge.webhooks.signing import (
    ATTEMPT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)

log = logs.get(__name__)

_RETRY_STATUSES = {408, 425, 429}
_MAX_DELAY_S = 60.0
_THREAD_DUMP_BYTES = 1 << 20


class _Failed(Exception):
    """An attempt worth retrying (connection error, timeout, 408/425/429/5xx)."""

    def __init__(self, error: str, status: int | None) -> None:
        super().__init__(error)
        self.error, self.status = error, status


@dataclass
class WebhookResult:
    request_id: str
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def event_type(payload: dict[str, Any]) -> str:
    """The Standard Webhooks event type of a body."""
    if payload.get("event") == "redelivered":
        return "generation.redelivered"
    return "generation.succeeded" if payload.get("status") == "success" else "generation.failed"


def _where(url: URL) -> str:
    """What a log line may say of a URL: no query string, no user info (tokens live there)."""
    return f"{url.scheme}://{url.host}{'' if url.port in (None, 80, 443) else ':' + str(url.port)}{url.path}"


class WebhookSender:
    """Signed, retried webhook POSTs in background tasks."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self._tasks: set[asyncio.Task[WebhookResult]] = set()
        self._session: aiohttp.ClientSession | None = None

    def schedule(self, job: JobInput, body: dict[str, Any] | BaseModel) -> asyncio.Task[WebhookResult] | None:
        """Start delivering `body` to the job's webhook, if it has one; returns immediately."""
        if job.webhook is None:
            return None
        task = asyncio.get_running_loop().create_task(
            self._deliver(job.webhook, job.request_id, body), name=f"webhook-{job.request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _deliver(
        self, target: WebhookTarget, request_id: str, body: dict[str, Any] | BaseModel
    ) -> WebhookResult:
        with logs.bind(request_id=request_id):
            payload = body.model_dump(mode="json", exclude_none=True) if isinstance(body, BaseModel) else dict(body)
            if target.extra_params:
                payload["extra_params"] = target.extra_params
            payload = capped(payload, self.settings.webhook_max_inline_bytes)  # URLs, not big data
            payload["type"] = event_type(payload)
            msg_id = f"{request_id}.{payload['type']}"
            raw = await self._encode(payload)
            secret_value = target.secret or self.settings.webhook_secret
            secret = secret_value.get_secret_value() if secret_value else None
            try:
                url = check_url(target.url, allow_private=self.settings.allow_private_urls)
            except (AddressRefused, ValueError) as exc:
                log.error("webhook not sent: %s", exc)
                obs.webhook_failed()
                return WebhookResult(request_id, False, 0, error=str(exc))
            result = await self._post_with_retries(url, raw, secret, request_id, msg_id)
            if not result.delivered:
                obs.webhook_failed()  # comfy_bridge_webhook_failures_total
            return result

    async def _encode(self, payload: dict[str, Any]) -> bytes:
        def dump() -> bytes:
            return json.dumps(payload, separators=(",", ":"), default=str).encode()

        # Inline outputs make bodies of megabytes: encode those off the loop.
        if any(isinstance(o, dict) and o.get("data") for o in payload.get("output") or []):
            return await asyncio.to_thread(dump)
        return dump()

    async def _post_with_retries(
        self, url: URL, raw: bytes, secret: str | None, request_id: str, msg_id: str
    ) -> WebhookResult:
        retries = self.settings.webhook_retries
        where = _where(url)
        policy = RetryPolicy(first_s=self.settings.webhook_retry_backoff_s, cap_s=_MAX_DELAY_S, attempts=retries + 1,
                             retry_on=lambda exc: isinstance(exc, _Failed), what=f"webhook to {where}", log=log)
        tries = 0
        try:
            async for attempt in policy.retrying():
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    result = await self._post_once(url, raw, secret, request_id, msg_id, tries)
        except _Failed as exc:
            log.error("webhook to %s failed after %d attempts: %s", where, tries, logs.redact(exc.error))
            return WebhookResult(request_id, False, tries, exc.status, exc.error)
        if result.status is not None and not result.delivered:
            log.error("webhook to %s refused with HTTP %d: not retried", where, result.status)
        elif not result.delivered:
            log.error("webhook not sent to %s: %s", where, result.error)
        return result

    async def _post_once(
        self, url: URL, raw: bytes, secret: str | None, request_id: str, msg_id: str, attempt: int
    ) -> WebhookResult:
        """One POST: its result when final (delivered or refused), _Failed when worth retrying."""
        ts = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts), ID_HEADER: msg_id,
                   ATTEMPT_HEADER: str(attempt)}
        if secret:  # HMAC over a big body: off the event loop
            headers[SIGNATURE_HEADER] = (await asyncio.to_thread(sign, secret, msg_id, ts, raw)
                                         if len(raw) > _THREAD_DUMP_BYTES else sign(secret, msg_id, ts, raw))
        try:
            async with self._http().post(url, data=raw, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            why = refused(exc)
            if why is not None:
                return WebhookResult(request_id, False, attempt, None, str(why))
            raise _Failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None) from exc
        if 200 <= status < 300:
            log.info("webhook delivered to %s (attempt %d, HTTP %d)", _where(url), attempt, status)
            return WebhookResult(request_id, True, attempt, status)
        if status in _RETRY_STATUSES or status >= 500:
            raise _Failed(f"HTTP {status}", status)
        return WebhookResult(request_id, False, attempt, status, f"HTTP {status}")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = guarded_session(
                allow_private=self.settings.allow_private_urls,
                timeout_s=self.settings.webhook_timeout_s,
                headers={"User-Agent": "comfy-vast-worker-webhook"},
            )
        return self._session

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give pending deliveries a moment to finish, then cancel the rest."""
        tasks = list(self._tasks)
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout_s)
            for task in still:
                task.cancel()
            if still:
                log.warning("%d webhook deliveries cancelled at shutdown", len(still))
                await asyncio.gather(*still, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
