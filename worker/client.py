"""A backend's client for a comfy-vast-worker endpoint: route, call, retry, within a deadline.

    async with WorkerClient("my-endpoint", api_key) as client:
        result = await client.generate({"workflow_json": graph}, deadline_s=120)
        for out in result.output: ...

    result = generate_sync({"workflow_json": graph}, endpoint="my-endpoint", api_key=key)

One call: POST {router}/route/ {endpoint, api_key, cost, request_idx} for a worker and
its signed auth_data, then POST {worker}/generate/sync {auth_data, payload: {input}}.
`cost` is the request's workload units (worker/workload.py), so the router balances in
the units the workers report.

Retries, with the project's backoff (comfy_bridge/retry.py: exponential, full jitter,
from `backoff_base_s` capped at `backoff_max_s`), never past the deadline:
- the router: no worker ready (an answer without `url`: polled again with the same
  request_idx), 429, 5xx, connection errors;
- the worker: connection refused (nothing was sent), 429 (the queue is full: the
  framework refused it), 503 (ComfyUI unavailable or restarting: the bridge refused it).
Once a worker may have accepted the work (the request was sent and the connection then
broke, or the deadline passed while it ran), it is not sent again, unless the caller gave
`request_id`, which makes the request idempotent (outputs and webhooks are keyed by it):
ResultUnknown says so instead.

Each call to a worker carries the time left as the request's `timeout_s` (less a margin
for the answer's way back; never more than a `timeout_s` the caller set), so a worker
stops the prompt and answers 504 instead of running on for a client that gave up.

Results are typed: GenerateResponse on success; a failure from the worker raises the
comfy_bridge error its FailureResponse names (MissingModels, ExecutionFailed...), with
`.response` (the FailureResponse) and `.http_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_lib
import time
import uuid
from typing import Any, AsyncIterator

import aiohttp
from pydantic import BaseModel, SecretStr

from comfy_bridge import logs
from comfy_bridge.schemas.job import GenerateResponse, JobInput
from comfy_bridge.retry import RetryPolicy
from worker import stream_client
from worker.call_outcome import (
    CallError,
    CallTimeout,
    Place,
    ResultUnknown,
    Retry,
    RouterError,
    WorkerHTTPError,
    answer,
    lost,
)
from worker.workload import WorkloadModel

log = logs.get(__name__)

# What a caller uses: the clients, and the errors a call can end in (worker/call_outcome.py).
__all__ = ["CallError", "CallTimeout", "ResultUnknown", "RouterError", "SyncWorkerClient", "WorkerClient",
           "WorkerHTTPError", "generate_sync", "worker_timeout_s"]

DEFAULT_ROUTER = "https://run.vast.ai"
ROUTE = "/generate/sync"  # the PyWorker route (worker/pyworker.py)
VAST_ROOT_CERT_URL = "https://console.vast.ai/static/jvastai_root.cer"


def worker_timeout_s(requested: Any, remaining_s: float) -> float:
    """The `timeout_s` a worker gets: the deadline's time left, less a margin (a tenth,
    at most 2 s) so its 504 arrives before the client stops listening; never more than
    the caller's own `timeout_s`."""
    budget = remaining_s - min(2.0, remaining_s / 10)
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        budget = min(budget, float(requested))
    return round(max(budget, 0.001), 3)


def _plain(value: Any) -> Any:
    """JSON-ready data with secrets revealed (model_dump(mode='json') would mask them)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(exclude_none=True))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class WorkerClient:
    """Async client; one aiohttp session, reused. Use `async with` or `aclose()`."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        router_url: str = DEFAULT_ROUTER,
        route: str = ROUTE,
        session: aiohttp.ClientSession | None = None,
        workload: WorkloadModel | None = None,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        worker_ssl: ssl_lib.SSLContext | bool | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._api_key = api_key
        self.router_url = router_url.rstrip("/")
        self.route = route
        self.workload = workload or WorkloadModel()
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self._session = session
        self._own_session = session is None
        self._worker_ssl = worker_ssl

    async def __aenter__(self) -> "WorkerClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    # --- the call -----------------------------------------------------------------------

    async def generate(
        self, job: dict[str, Any] | JobInput, *, deadline_s: float = 600.0, cost: float | None = None
    ) -> GenerateResponse:
        """Run one request on some worker of the endpoint; see the module docstring."""
        payload_input, idempotent = self._prepare(job)
        cost = self.workload.payload_units({"input": payload_input}) if cost is None else cost
        deadline = time.monotonic() + deadline_s
        place = Place()
        failures = 0
        reason = ""
        with logs.bind(request_id=payload_input.get("request_id")):
            while True:
                try:
                    ticket = await self._route_until_ready(cost, place, deadline)
                    return await self._call_worker(ticket, payload_input, deadline, idempotent)
                except Retry as r:
                    reason = place.reason = r.reason
                    failures += 1
                    log.info("retrying: %s", reason)
                    await self._backoff(failures, deadline, reason)

    def _prepare(self, job: dict[str, Any] | JobInput) -> tuple[dict[str, Any], bool]:
        if isinstance(job, JobInput):
            idempotent = "request_id" in job.model_fields_set
            data = _plain(job)
        elif isinstance(job, dict):
            data = dict(job["input"]) if set(job) == {"input"} and isinstance(job["input"], dict) else dict(job)
            idempotent = bool(data.get("request_id"))
            data = _plain(data)
        else:
            raise TypeError("job must be a dict (the request's `input`) or a JobInput")
        if not data.get("request_id"):
            data["request_id"] = uuid.uuid4().hex
        return data, idempotent

    async def _backoff(self, failures: int, deadline: float, reason: str) -> None:
        if deadline - time.monotonic() <= 0:
            raise CallTimeout(f"deadline passed: {reason}", reason)
        await RetryPolicy(first_s=self.backoff_base_s, cap_s=self.backoff_max_s).sleep(failures, deadline)
        if deadline - time.monotonic() <= 0:
            raise CallTimeout(f"deadline passed: {reason}", reason)

    async def _route_until_ready(self, cost: float, place: Place, deadline: float) -> dict[str, Any]:
        """auth_data of a ready worker; polls while none is ready, keeping the request's
        place (request_idx) across polls and retries."""
        polls = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = place.reason or "routing"
                raise CallTimeout(f"deadline passed: {last}", last)
            body = {
                "endpoint": self.endpoint,
                "api_key": self._api_key,
                "cost": cost,
                "request_idx": place.request_idx,
                "replay_timeout": max(1.0, remaining),
            }
            try:
                async with self._http().post(
                    f"{self.router_url}/route/",
                    json=body,
                    headers={"Authorization": f"Bearer {self._api_key}"},
                    timeout=aiohttp.ClientTimeout(total=min(remaining, 30.0), sock_connect=self.connect_timeout_s),
                ) as r:
                    text = await r.text()
                    if r.status == 429 or r.status >= 500:
                        raise Retry(f"router answered HTTP {r.status}")
                    if r.status != 200:
                        raise RouterError(f"router refused the call: HTTP {r.status} {text[:300]}", r.status, text)
                    try:
                        answer = await r.json(content_type=None)
                    except ValueError:
                        raise Retry("router answered something that is not JSON") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                if isinstance(e, asyncio.TimeoutError) and deadline - time.monotonic() <= 0.05:
                    last = place.reason or "routing"
                    raise CallTimeout(f"deadline passed: {last}", last) from None
                raise Retry(f"router unreachable: {type(e).__name__}: {e}") from e
            if isinstance(answer, dict):
                with contextlib.suppress(TypeError, ValueError):
                    place.request_idx = int(answer.get("request_idx") or place.request_idx)
                if answer.get("url"):
                    return answer
            polls += 1
            status = answer.get("status") if isinstance(answer, dict) else answer
            place.reason = f"no worker ready ({status})"
            await self._backoff(polls, deadline, place.reason)

    async def _open_worker(
        self, ticket: dict[str, Any], payload_input: dict[str, Any], deadline: float, route: str
    ) -> tuple[str, Any]:
        """(the worker's URL, the signed POST to `route` as an `async with`), within the deadline."""
        url = str(ticket["url"]).rstrip("/")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CallTimeout("deadline passed before calling a worker", "routing")
        ssl = await self._ssl_for(url)
        job = {**payload_input, "timeout_s": worker_timeout_s(payload_input.get("timeout_s"), remaining)}
        return url, self._http().post(
            f"{url}{route}",
            json={"auth_data": ticket, "payload": {"input": job}},
            timeout=aiohttp.ClientTimeout(total=remaining, sock_connect=min(remaining, self.connect_timeout_s)),
            ssl=ssl,
        )

    async def _call_worker(
        self, ticket: dict[str, Any], payload_input: dict[str, Any], deadline: float, idempotent: bool
    ) -> GenerateResponse:
        url, post = await self._open_worker(ticket, payload_input, deadline, self.route)
        try:
            async with post as r:
                status = r.status
                data = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise lost(e, url, idempotent) from e
        return answer(url, status, data)

    async def stream(
        self, job: dict[str, Any] | JobInput, *, deadline_s: float = 600.0, cost: float | None = None
    ) -> AsyncIterator[Any]:
        """The request's live events (comfy_bridge/jobs/stream_protocol.py) through the
        worker's /generate/stream; the last is a ResultEvent, or the failure is raised as by
        `generate`. Same routing, retries and deadline (worker/stream_client.py)."""
        async with contextlib.aclosing(stream_client.stream(self, job, deadline_s=deadline_s, cost=cost)) as events:
            async for event in events:
                yield event

    async def _ssl_for(self, url: str) -> ssl_lib.SSLContext | bool | None:
        """Vast workers serve HTTPS with certificates from Vast's own root (USE_SSL=true)."""
        if not url.startswith("https://") or self._worker_ssl is not None:
            return self._worker_ssl
        async with self._http().get(VAST_ROOT_CERT_URL, timeout=aiohttp.ClientTimeout(total=30)) as r:
            r.raise_for_status()
            pem = (await r.read()).decode("ascii", "replace")
        ctx = ssl_lib.create_default_context()
        ctx.load_verify_locations(cadata=pem if "BEGIN CERTIFICATE" in pem else None)
        # Vast's root sets pathlen without keyCertSign; OpenSSL 3 strict mode refuses it.
        ctx.verify_flags &= ~ssl_lib.VERIFY_X509_STRICT
        self._worker_ssl = ctx
        return ctx


class SyncWorkerClient:
    """Blocking wrapper: one private event loop, one session, reused across calls."""

    def __init__(self, endpoint: str, api_key: str, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = WorkerClient(endpoint, api_key, **kwargs)

    def generate(self, job: dict[str, Any] | JobInput, **kwargs: Any) -> GenerateResponse:
        return self._runner.run(self._client.generate(job, **kwargs))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()

    def __enter__(self) -> "SyncWorkerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def generate_sync(
    job: dict[str, Any] | JobInput,
    *,
    endpoint: str,
    api_key: str,
    router_url: str = DEFAULT_ROUTER,
    deadline_s: float = 600.0,
    **kwargs: Any,
) -> GenerateResponse:
    """One blocking call; see WorkerClient.generate."""
    with SyncWorkerClient(endpoint, api_key, router_url=router_url, **kwargs) as c:
        return c.generate(job, deadline_s=deadline_s)
