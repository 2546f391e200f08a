"""HTTP routes of the bridge: POST /generate/sync, GET /health, GET /ready.

Every answer is JSON; a failure is always `{id, status: "failed", error: {...}}` with
the status the error class carries, so callers (and the PyWorker in front) branch on
the status alone. Tracebacks and secrets never leave the process: they go to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from pydantic_core import to_json

from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.comfyui.client import ComfyClient
from comfy_bridge.delivery import inline, choice
from comfy_bridge.errors import BadRequest, BridgeError, ComfyUnavailable, PayloadTooLarge
from comfy_bridge.schemas.job import REQUEST_ID_PATTERN, GenerateRequest, GenerateResponse, JobInput
from comfy_bridge.jobs.serving import JobRunner, failure_body

log = logs.get(__name__)

_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
_READY_TIMEOUT_S = 3.0
_THREAD_PARSE_BYTES = 1 << 20


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=to_json(body), status=status, content_type="application/json")


def error_response(err: BridgeError, request_id: str | None = None, prompt_id: str | None = None) -> web.Response:
    return json_response(failure_body(request_id, err, prompt_id), err.status)


class BridgeRoutes:
    """The handlers, holding the runner (which keeps the jobs left running after their caller left)."""

    def __init__(
        self, runner: JobRunner, client: ComfyClient, max_body_bytes: int, metrics: obs.Metrics | None = None
    ) -> None:
        self.runner = runner
        self.client = client
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or obs.METRICS

    def register(self, app: web.Application) -> None:
        app.router.add_post("/generate/sync", self.generate)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.on_shutdown.append(self._drain)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        with self.metrics.inflight():
            parsed = await self._parse(request)
            if isinstance(parsed, JobInput):
                return await self._run(parsed, request, started)
            err, request_id = parsed
            self._finished(request_id, started, err)
            return error_response(err, request_id)

    async def _parse(self, request: web.Request) -> JobInput | tuple[BridgeError, str | None]:
        """The request's JobInput, or the 4xx error it gets (with its request_id when valid)."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return (PayloadTooLarge(
                f"request body is over the {self.max_body_bytes}-byte limit "
                "(COMFY_BRIDGE_MAX_BODY_BYTES); send input images as URLs or s3:// keys "
                "instead of base64"
            ), None)
        try:
            # A body of base64 images can be tens of MB: parse it off the event loop.
            payload = await asyncio.to_thread(json.loads, raw) if len(raw) > _THREAD_PARSE_BYTES else json.loads(raw)
        except (ValueError, RecursionError):
            return (BadRequest(
                'body is not JSON: send {"input": {"workflow_json": {...}}} with '
                "Content-Type: application/json"
            ), None)
        request_id = _request_id_of(payload)
        if not isinstance(payload, dict) or "input" not in payload:
            return (BadRequest(
                'missing "input": the body must be {"input": {...}} with workflow_json '
                "(or modifier + modifications) inside"
            ), request_id)
        try:
            return GenerateRequest.model_validate(payload).input
        except ValidationError as exc:
            return (_validation_error(exc), request_id)
        except RecursionError:  # a graph nested deeper than the validator can walk
            return (BadRequest("invalid request: the body is nested too deeply"), request_id)

    def _finished(
        self,
        request_id: str | None,
        started: float,
        error: BaseException | None,
        response: GenerateResponse | None = None,
        prompt_id: str | None = None,
    ) -> None:
        """Count the request by outcome, observe its timings, and log its one completion line."""
        outcome = obs.outcome_for(error)
        total_ms = round((time.monotonic() - started) * 1000, 3)
        if response is not None:
            timings: dict[str, Any] = response.timings.model_dump()
            prompt_id = response.prompt_id
        else:
            timings = {"total_ms": total_ms}
        self.metrics.observe_request(outcome, timings)
        fields: dict[str, Any] = {"outcome": outcome, "timings": timings}
        if isinstance(error, BridgeError):
            fields.update(status=error.status, error_type=error.type, retriable=error.retriable)
            prompt_id = prompt_id or error.details.get("prompt_id")
        elif response is not None:
            fields.update(status=200, outputs=len(response.output))
        with logs.bind(request_id=request_id, prompt_id=prompt_id):
            log.log(20 if response is not None or outcome == "bad_request" else 30,
                    "request finished: %s", outcome, extra={"fields": fields})

    async def _run(self, job: JobInput, request: web.Request, started: float) -> web.StreamResponse:
        task = asyncio.ensure_future(self.runner.run(job))
        try:
            response = await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            self.caller_left(job, task, started, exc)
            raise
        except BridgeError as err:
            self._finished(job.request_id, started, err)
            return error_response(err, job.request_id)
        except Exception:
            with logs.bind(request_id=job.request_id):
                log.exception("unexpected error while running the request")
            err = BridgeError("internal error in the bridge; it was logged with this request id")
            self._finished(job.request_id, started, err)
            return error_response(err, job.request_id)
        self._finished(job.request_id, started, None, response)
        return await _write_parts(request, inline.render_parts(response))

    def caller_left(self, job: JobInput, task: asyncio.Task[Any], started: float, exc: BaseException) -> None:
        """The caller went away. Outputs bound for S3 or a webhook are still wanted;
        otherwise stop the prompt so it frees the GPU for someone who is waiting."""
        self._finished(job.request_id, started, exc)
        if choice.result_wanted_without_caller(job, self.runner.settings):
            self.runner.keep(task)  # drained before ComfyUI stops (comfy_bridge/shutdown.py)
            task.add_done_callback(self._detached_done)
            log.info("caller left; finishing the request for its s3/webhook destination",
                     extra={"fields": {"request_id": job.request_id}})
        else:
            task.cancel()
            log.info("caller left; request cancelled", extra={"fields": {"request_id": job.request_id}})

    def _detached_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("detached request failed: %s", getattr(exc, "message", repr(exc)))

    async def _drain(self, app: web.Application) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.runner.drain(), 30)

    async def health(self, request: web.Request) -> web.Response:
        """The process is alive (always 200); says whether ComfyUI's websocket is up."""
        return json_response({
            "status": "ok",
            "comfyui_connected": self.client.connected,
            "requests_active": self.runner.active,
            "prompts_inflight": self.runner.prompts_inflight,
        })

    async def ready(self, request: web.Request) -> web.Response:
        """200 only when ComfyUI answers /system_stats: the bridge can take work."""
        try:
            if self.runner.availability is not None:
                self.runner.availability()  # a supervisor restarting ComfyUI: not ready
            stats = await asyncio.wait_for(self.client.system_stats(), _READY_TIMEOUT_S)
        except (BridgeError, asyncio.TimeoutError) as exc:
            err = exc if isinstance(exc, BridgeError) else ComfyUnavailable(
                "ComfyUI did not answer /system_stats in time")
            return json_response({"status": "not_ready", "error": err.to_dict()}, 503)
        system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
        return json_response({"status": "ready", "comfyui_version": system.get("comfyui_version")})


async def _write_parts(request: web.Request, parts: list[inline.Part]) -> web.StreamResponse:
    """Write a pre-encoded body piece by piece (no joined multi-MB copy); a streamed
    output's base64 (delivery/stream.py) is encoded chunk by chunk as it is written."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return web.Response(body=parts[0], content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = sum(len(p) for p in parts)
    await resp.prepare(request)
    await inline.write_parts(resp, parts)
    await resp.write_eof()
    return resp


def _request_id_of(payload: Any) -> str | None:
    """The caller's request_id, when it is valid, so even a refusal can be matched up."""
    if isinstance(payload, dict) and isinstance(payload.get("input"), dict):
        rid = payload["input"].get("request_id")
        if isinstance(rid, str) and _REQUEST_ID_RE.match(rid):
            return rid
    return None


def _validation_error(exc: ValidationError) -> BadRequest:
    """One 422 listing each field's location and what is wrong (never echoing values)."""
    problems = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        msg = re.sub(r"^(Value|Assertion) error, ", "", e["msg"])
        problems.append({"loc": loc, "message": msg})
    text = "; ".join(f"{p['loc']}: {p['message']}" for p in problems)
    return BadRequest(f"invalid request: {text}", errors=problems)
