"""The `cost` field of the worker's answer: what one generation cost, so a backend can bill it.

    "cost": {"gpu_seconds": 1.3412, "usd": 0.00074511, "gpu_price_per_hour": 2.0}

`gpu_seconds` is the request's `timings.execution_ms` (ComfyUI's own execution time,
comfy_bridge/jobs/serving.py) in seconds: the time the GPU worked for this request.
`usd` and `gpu_price_per_hour` appear only when COMFY_WORKER_GPU_PRICE_PER_HOUR is set
(worker/settings.py; a deploy can set it per template): usd = gpu_seconds x price / 3600.

The bridge knows nothing of prices; the worker adds the field on the way out
(worker/pyworker.py's relay). Success bodies can be large (inline outputs) and are
streamed, so CostSplicer never holds a whole body: it keeps the first and last
WINDOW bytes, reads `timings` from there, and writes the field before the closing brace.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from comfy_bridge.schemas.job import GenerateResponse

WINDOW = 64 * 1024
_KEY = b'"timings"'


class RequestCost(BaseModel):
    gpu_seconds: float
    usd: float | None = None
    gpu_price_per_hour: float | None = None


class PricedResponse(GenerateResponse):
    """A worker's success answer: the bridge's, plus `cost` (absent from a bare bridge)."""

    cost: RequestCost | None = None


def request_cost(timings: dict[str, Any], price_per_hour: float | None) -> RequestCost:
    gpu_s = max(0.0, float(timings.get("execution_ms") or 0.0)) / 1000.0
    if price_per_hour is None:
        return RequestCost(gpu_seconds=round(gpu_s, 4))
    return RequestCost(gpu_seconds=round(gpu_s, 4), usd=round(gpu_s * price_per_hour / 3600.0, 8),
                       gpu_price_per_hour=price_per_hour)


def _timings_in(window: bytes) -> dict[str, Any] | None:
    at = window.rfind(_KEY)
    if at < 0:
        return None
    text = window[at + len(_KEY):].decode("utf-8", "replace").lstrip()
    if not text.startswith(":"):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[1:].lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class CostSplicer:
    """Streams a JSON success body through, adding `cost` before its last `}`.

    feed() returns the bytes that can go out now; finish() the rest. A body whose
    timings cannot be found goes out unchanged."""

    def __init__(self, price_per_hour: float | None) -> None:
        self.price_per_hour = price_per_hour
        self._head = b""
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if len(self._head) < WINDOW:
            self._head += chunk[: WINDOW - len(self._head)]
        self._tail += chunk
        if len(self._tail) <= WINDOW:
            return b""
        out, self._tail = self._tail[:-WINDOW], self._tail[-WINDOW:]
        return out

    def finish(self) -> bytes:
        tail = self._tail
        end = tail.rstrip()
        timings = _timings_in(tail) or _timings_in(self._head)
        if timings is None or not end.endswith(b"}"):
            return tail
        cost = request_cost(timings, self.price_per_hour).model_dump(exclude_none=True)
        return end[:-1] + b', "cost": ' + json.dumps(cost).encode() + b"}"
