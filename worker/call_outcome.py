"""What a call to a worker came to: the errors a backend sees, and when to try again.

`CallError` and its subclasses are the outcomes that are not a worker's answer;
`failure_error` turns a worker's FailureResponse into the comfy_bridge error it names;
`answer` and `lost` sort a worker's reply (or a broken connection) into a response, a
`Retry`, or an error. Shared by worker/client.py and worker/stream_client.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from pydantic import ValidationError

from comfy_bridge import errors
from comfy_bridge.schemas.job import FailureResponse, GenerateResponse
from worker.cost import PricedResponse


class CallError(Exception):
    """A call that did not produce a worker's answer."""


class RouterError(CallError):
    """The router refused the call (bad api key, unknown endpoint...): retrying won't help."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class CallTimeout(CallError, TimeoutError):
    """The deadline passed before a result; `reason` is what was last in the way."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ResultUnknown(CallError):
    """A worker accepted the request, then the connection broke: it may have run."""

    def __init__(self, message: str, worker_url: str) -> None:
        super().__init__(message)
        self.worker_url = worker_url


class WorkerHTTPError(CallError):
    """The worker answered an error without a FailureResponse body (e.g. 401: bad signature)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"worker answered HTTP {status}: {text[:300] or '(empty body)'}")
        self.status = status
        self.text = text


def _error_classes() -> dict[str, type[errors.BridgeError]]:
    found: dict[str, type[errors.BridgeError]] = {}
    stack: list[type[errors.BridgeError]] = [errors.BridgeError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.type, cls)
        stack.extend(cls.__subclasses__())
    return found


def failure_error(status: int, failure: FailureResponse) -> errors.BridgeError:
    """The comfy_bridge error a FailureResponse names, carrying the response."""
    body = failure.error
    cls = _error_classes().get(body.type, errors.BridgeError)
    details = {k: v for k, v in (body.model_extra or {}).items()}
    err = cls(body.message, **details)
    err.response = failure  # type: ignore[attr-defined]
    err.http_status = status  # type: ignore[attr-defined]
    err.retriable_here = body.retriable  # type: ignore[attr-defined]
    return err


@dataclass
class Place:
    """The request's place in the router's queue, kept across polls and retries."""

    request_idx: int = 0
    # What was last in the way (a 503, no worker ready...): what a deadline reports, rather
    # than the router call our own deadline cut short.
    reason: str = ""


class Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def lost(e: BaseException, url: str, idempotent: bool) -> Exception:
    """What a broken or timed-out call to a worker means for a retry."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return Retry(f"worker {url} unreachable: {e}")
    if isinstance(e, aiohttp.ConnectionTimeoutError):  # connecting timed out: nothing was sent
        return Retry(f"worker {url} did not accept the connection: {e}")
    if isinstance(e, asyncio.TimeoutError):
        return CallTimeout(f"deadline passed while worker {url} ran the request", "worker busy")
    # Sent (or partly sent) and then lost: the worker may be running it.
    if idempotent:
        return Retry(f"connection to worker {url} broke ({type(e).__name__}); request_id makes a resend safe")
    return ResultUnknown(
        f"connection to worker {url} broke after it accepted the request ({type(e).__name__}: {e}); "
        "not resent, since it may have run: give a request_id to make resends safe",
        url,
    )


def answer(url: str, status: int, data: bytes) -> GenerateResponse:
    """The worker's JSON answer: the response, or the retry or error its status means."""
    if status == 200:
        try:
            return PricedResponse.model_validate_json(data)  # a GenerateResponse with `cost`
        except ValidationError as e:
            raise CallError(f"worker {url} answered 200 with an unexpected body: {e}") from e
    if status == 429:
        raise Retry(f"worker {url} queue is full (429)")
    failure: FailureResponse | None = None
    try:
        failure = FailureResponse.model_validate_json(data) if data else None
    except ValidationError:
        failure = None
    if status == 503:
        raise Retry(f"worker {url} unavailable (503{': ' + failure.error.message if failure else ''})")
    if failure is not None:
        raise failure_error(status, failure)
    raise WorkerHTTPError(status, data.decode("utf-8", "replace"))
