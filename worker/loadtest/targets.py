"""Where a load test sends its requests: one class per kind of target, one interface.

    vast:ENDPOINT      through a Vast router (https://run.vast.ai, or the local emulator of
                       `comfy-worker serve --local`) with worker/client.py's WorkerClient,
                       which routes, signs and retries (429, 503, no worker ready)
    bridge:URL         a bridge (`comfy-worker bridge`) reached directly: POST URL/generate/sync
                       {"input": ...}; one attempt, nothing retried
    runpod:ENDPOINT_ID a RunPod serverless endpoint running worker-comfyui: POST
                       {base}/v2/ENDPOINT_ID/runsync {"input": {"workflow", "images"}} with
                       RUNPOD_API_KEY, polling /status/ID while the job is still queued

Every target answers an Outcome (worker/loadtest/protocol.py). For vast: the attempts,
the retry reasons and the "no worker ready" polls come from watching WorkerClient's HTTP
calls (aiohttp trace hooks), so the client itself stays as every backend uses it.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential
from yarl import URL

from comfy_bridge.errors import BridgeError
from worker.client import CallError, CallTimeout, WorkerClient, WorkerHTTPError
from worker.cost import PricedResponse
from worker.loadtest.protocol import Outcome, WorkerTimings

DEFAULT_RUNPOD_URL = "https://api.runpod.ai"


class TargetSpecError(ValueError):
    """A --target that cannot be used as given."""


def b64_size(data: str) -> int:
    """Bytes a base64 string decodes to, without decoding it."""
    n = len(data)
    return max(0, n * 3 // 4 - data[-2:].count("="))


def _timings(data: Any) -> WorkerTimings | None:
    return WorkerTimings.model_validate(data) if isinstance(data, dict) else None


def _success(result: Any) -> Outcome:
    """The Outcome of a bridge/worker success answer (a GenerateResponse, maybe with `cost`)."""
    cost = getattr(result, "cost", None)
    return Outcome(status="success", http_status=200, timings=_timings(result.timings.model_dump()),
                   workload=result.workload, outputs=len(result.output),
                   output_bytes=sum(o.bytes for o in result.output),
                   cost_usd=cost.usd if cost is not None else None,
                   worker_price_per_hour=cost.gpu_price_per_hour if cost is not None else None)


class Target(abc.ABC):
    """One platform under test. `call` never raises for a failed generation: it answers
    an Outcome with status "failed" and what went wrong."""

    kind: str

    def __init__(self, name: str, **session_kw: Any) -> None:
        self.name = name
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), **session_kw)

    async def __aenter__(self) -> "Target":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def call(self, job: dict[str, Any], deadline_s: float) -> Outcome: ...

    async def aclose(self) -> None:
        await self._session.close()


# ---- vast: ------------------------------------------------------------------------------


@dataclass
class _CallTrace:
    """What one WorkerClient.generate() did on the wire."""

    routed: int = 0                      # /route/ answers 200 (with or without a worker)
    worker_calls: list[str] = field(default_factory=list)  # one entry per worker attempt: its status
    worker: str | None = None


_trace: contextvars.ContextVar[_CallTrace | None] = contextvars.ContextVar("loadtest_trace", default=None)


def _trace_config() -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()

    async def on_end(_s: Any, _c: Any, params: aiohttp.TraceRequestEndParams) -> None:
        t = _trace.get()
        if t is None:
            return
        if params.url.path.endswith("/route/"):
            t.routed += params.response.status == 200
        elif params.method == "POST":  # the call to the worker (a GET is Vast's root certificate)
            t.worker_calls.append(str(params.response.status))
            t.worker = str(params.url.origin())

    async def on_exc(_s: Any, _c: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        t = _trace.get()
        if t is not None and params.method == "POST" and not params.url.path.endswith("/route/"):
            t.worker_calls.append(type(params.exception).__name__)
            t.worker = str(params.url.origin())

    tc.on_request_end.append(on_end)
    tc.on_request_exception.append(on_exc)
    return tc


class VastTarget(Target):
    kind = "vast"

    def __init__(self, name: str, endpoint: str, api_key: str, router_url: str) -> None:
        super().__init__(name, trace_configs=[_trace_config()])
        self._client = WorkerClient(endpoint, api_key, router_url=router_url, session=self._session)

    async def call(self, job: dict[str, Any], deadline_s: float) -> Outcome:
        trace = _CallTrace()
        token = _trace.set(trace)
        try:
            result = await self._client.generate(job, deadline_s=deadline_s)
        except BridgeError as e:
            failure = getattr(e, "response", None)
            out = Outcome(status="failed", http_status=getattr(e, "http_status", e.status), error_type=e.type,
                          error_message=e.message, retriable=getattr(e, "retriable_here", e.retriable),
                          timings=None)
            if failure is not None and failure.output:
                out.outputs = len(failure.output)
        except CallTimeout as e:
            out = Outcome(status="failed", error_type="deadline", error_message=str(e), retriable=True)
        except WorkerHTTPError as e:
            out = Outcome(status="failed", http_status=e.status, error_type=f"http_{e.status}",
                          error_message=str(e), retriable=e.status >= 500)
        except CallError as e:
            out = Outcome(status="failed", error_type=type(e).__name__, error_message=str(e),
                          retriable=type(e).__name__ != "RouterError")
        else:
            out = _success(result)
        finally:
            _trace.reset(token)
        attempts = max(1, len(trace.worker_calls))
        out.attempts = attempts
        out.no_worker_ready = max(0, trace.routed - len(trace.worker_calls))
        out.retried_on = trace.worker_calls[:-1] + ["no worker ready"] * out.no_worker_ready
        out.worker = trace.worker
        return out

    async def aclose(self) -> None:
        await self._client.aclose()
        await super().aclose()


# ---- bridge: ----------------------------------------------------------------------------


def _failure_outcome(http_status: int | None, body: Any, fallback: str) -> Outcome:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return Outcome(status="failed", http_status=http_status, error_type=str(error.get("type") or "unknown"),
                       error_message=str(error.get("message") or "")[:2000], retriable=error.get("retriable"))
    return Outcome(status="failed", http_status=http_status, error_type=f"http_{http_status}",
                   error_message=fallback[:2000], retriable=(http_status or 500) >= 500 or http_status == 429)


class BridgeTarget(Target):
    kind = "bridge"

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name)
        self.url = url.rstrip("/")

    async def call(self, job: dict[str, Any], deadline_s: float) -> Outcome:
        try:
            async with self._session.post(f"{self.url}/generate/sync", json={"input": job},
                                          timeout=aiohttp.ClientTimeout(total=deadline_s)) as r:
                status, raw = r.status, await r.read()
        except asyncio.TimeoutError:
            return Outcome(status="failed", error_type="deadline", retriable=True,
                           error_message=f"no answer within {deadline_s} s", worker=self.url)
        except aiohttp.ClientError as e:
            return Outcome(status="failed", error_type=type(e).__name__, error_message=str(e), retriable=True,
                           worker=self.url)
        if status == 200:
            try:
                result = PricedResponse.model_validate_json(raw)
            except ValueError as e:
                return Outcome(status="failed", http_status=200, error_type="bad_response", error_message=str(e),
                               retriable=False, worker=self.url)
            out = _success(result)
            out.worker = self.url
            return out
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        out = _failure_outcome(status, body, raw.decode("utf-8", "replace") or "(empty body)")
        out.worker = self.url
        return out


# ---- runpod: ----------------------------------------------------------------------------


class _RunPodBusy(Exception):
    """429 or 5xx from RunPod's API before a job existed: safe to send again."""


_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class RunPodTarget(Target):
    kind = "runpod"

    def __init__(self, name: str, endpoint_id: str, api_key: str, base_url: str = DEFAULT_RUNPOD_URL,
                 poll_s: float = 1.0) -> None:
        super().__init__(name, headers={"Authorization": f"Bearer {api_key}"})
        self.base = f"{base_url.rstrip('/')}/v2/{endpoint_id}"
        self.poll_s = poll_s

    @staticmethod
    def job_input(job: dict[str, Any]) -> dict[str, Any]:
        """worker-comfyui's input: `workflow` (API format) and `images` [{name, image}]."""
        graph = job.get("workflow_json", job.get("workflow"))
        out: dict[str, Any] = {"workflow": graph}
        if job.get("images"):
            out["images"] = [{"name": i.get("name"), "image": i.get("image")} for i in job["images"]]
        return out

    async def call(self, job: dict[str, Any], deadline_s: float) -> Outcome:
        deadline = time.monotonic() + deadline_s
        retried: list[str] = []
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_RunPodBusy), stop=stop_after_delay(deadline_s),
                wait=wait_random_exponential(multiplier=0.25, max=5.0), reraise=True,
            ):
                with attempt:
                    answer = await self._runsync(job, deadline, retried)
            answer = await self._until_done(answer, deadline)
        except _RunPodBusy as e:
            return Outcome(status="failed", error_type="deadline", error_message=f"RunPod kept refusing: {e}",
                           retriable=True, attempts=len(retried), retried_on=retried[:-1])
        except asyncio.TimeoutError:
            return Outcome(status="failed", error_type="deadline", retriable=True, attempts=max(1, len(retried)),
                           error_message=f"no result within {deadline_s} s", retried_on=retried[:-1])
        except aiohttp.ClientError as e:
            return Outcome(status="failed", error_type=type(e).__name__, error_message=str(e), retriable=True,
                           attempts=max(1, len(retried)), retried_on=retried[:-1])
        out = self._outcome(answer)
        out.attempts = max(1, len(retried))
        out.retried_on = retried[:-1]
        return out

    async def _runsync(self, job: dict[str, Any], deadline: float, retried: list[str]) -> tuple[int, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        async with self._session.post(f"{self.base}/runsync", json={"input": self.job_input(job)},
                                      timeout=aiohttp.ClientTimeout(total=remaining)) as r:
            retried.append(str(r.status))
            if r.status == 429 or r.status in (502, 503):
                raise _RunPodBusy(f"HTTP {r.status}")
            return r.status, await r.json(content_type=None) if r.status < 300 else await r.text()

    async def _until_done(self, answer: tuple[int, Any], deadline: float) -> tuple[int, Any]:
        status, body = answer
        while status == 200 and isinstance(body, dict) and body.get("status") not in _TERMINAL and body.get("id"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            await asyncio.sleep(min(self.poll_s, remaining))
            async with self._session.get(f"{self.base}/status/{body['id']}",
                                         timeout=aiohttp.ClientTimeout(total=max(0.1, remaining))) as r:
                status = r.status
                body = await r.json(content_type=None) if r.status < 300 else await r.text()
        return status, body

    @staticmethod
    def _outcome(answer: tuple[int, Any]) -> Outcome:
        status, body = answer
        if status != 200 or not isinstance(body, dict):
            return _failure_outcome(status, None, str(body))
        timings = WorkerTimings(queued_ms=body.get("delayTime"), execution_ms=body.get("executionTime"))
        worker = body.get("workerId")
        output = body.get("output") if isinstance(body.get("output"), dict) else {}
        error = body.get("error") or output.get("error")
        if body.get("status") != "COMPLETED" or error:
            return Outcome(status="failed", http_status=status, error_type=f"runpod_{str(body.get('status')).lower()}",
                           error_message=str(error or body.get("status"))[:2000], retriable=False,
                           timings=timings, worker=worker)
        images = [i for i in output.get("images") or [] if isinstance(i, dict)]
        size = sum(b64_size(i["data"]) for i in images if i.get("type", "base64") == "base64" and i.get("data"))
        return Outcome(status="success", http_status=200, timings=timings, worker=worker, outputs=len(images),
                       output_bytes=size)


def parse_target(spec: str, *, router_url: str, api_key: str | None, runpod_url: str,
                 runpod_api_key: str | None) -> Target:
    """A Target from `kind:VALUE`; TargetSpecError says what is wrong and what to do."""
    kind, sep, value = spec.partition(":")
    if not sep or not value:
        raise TargetSpecError(f"--target {spec!r}: expected vast:ENDPOINT, bridge:URL or runpod:ENDPOINT_ID")
    if kind == "vast":
        if not api_key:
            raise TargetSpecError(f"--target {spec}: needs --api-key or VAST_API_KEY")
        return VastTarget(spec, value, api_key, router_url)
    if kind == "bridge":
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise TargetSpecError(f"--target {spec}: bridge:URL needs an http(s) URL, e.g. bridge:http://127.0.0.1:8000")
        return BridgeTarget(spec, value)
    if kind == "runpod":
        if not runpod_api_key:
            raise TargetSpecError(f"--target {spec}: set RUNPOD_API_KEY (or --runpod-api-key)")
        return RunPodTarget(spec, value, runpod_api_key, runpod_url)
    raise TargetSpecError(f"--target {spec!r}: unknown kind {kind!r}; use vast:, bridge: or runpod:")
