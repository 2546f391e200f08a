"""Prometheus metrics of the bridge and `GET /metrics`.

Why: a user deciding whether Vast is reliable enough needs numbers from their own
workers: how requests end, how long execution and delivery take, how often ComfyUI
restarts. One small registry (not prometheus_client's global one, so tests and several
apps in one process do not collide), filled by a few calls from the JobRunner.

    from comfy_bridge import observability as obs
    with obs.inflight():
        ...
    obs.observe_request(obs.outcome_for(error_or_None), response.timings)
    obs.add_routes(app)                      # GET /metrics
    obs.track_supervisor(supervisor)         # restarts + state
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)

from comfy_bridge import errors

# From a 34 ms weightless prompt to a 10-minute video workflow (FACTS.md).
BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

OUTCOMES = (
    "success",
    "bad_request",
    "execution_error",
    "out_of_memory",
    "delivery_failed",
    "unavailable",
    "unrecoverable",
    "timeout",
    "cancelled",
    "internal_error",
)

SUPERVISOR_STATES = ("stopped", "starting", "ready", "restarting", "failed")

# Most specific first: the first class an error is an instance of names its outcome.
_OUTCOME_OF: tuple[tuple[type[BaseException], str], ...] = (
    (errors.BadRequest, "bad_request"),
    (errors.OutOfMemory, "out_of_memory"),
    (errors.ExecutionFailed, "execution_error"),
    (errors.DeliveryFailed, "delivery_failed"),
    (errors.ComfyUnrecoverable, "unrecoverable"),
    (errors.ComfyUnavailable, "unavailable"),
    (errors.DeadlineExceeded, "timeout"),
    (asyncio.CancelledError, "cancelled"),
)

# Timings field (milliseconds, as in the response) -> histogram.
_PHASES = {
    "queued_ms": "queued",
    "inputs_ms": "inputs",
    "execution_ms": "execution",
    "outputs_ms": "delivery",
    "total_ms": "total",
}


def outcome_for(error: BaseException | None) -> str:
    """The `outcome` label for a request that ended with `error` (None: success)."""
    if error is None:
        return "success"
    for cls, outcome in _OUTCOME_OF:
        if isinstance(error, cls):
            return outcome
    return "internal_error"


class Metrics:
    """Every metric of the bridge in its own registry."""

    def __init__(self, namespace: str = "comfy_bridge") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = Counter(
            "requests", "Requests by how they ended", ["outcome"], namespace=ns, registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.inflight_requests = Gauge(
            "inflight_requests", "Requests being handled now", namespace=ns, registry=r
        )
        self.comfy_queue_depth = Gauge(
            "comfy_queue_depth", "Prompts running or pending in ComfyUI", namespace=ns, registry=r
        )
        self.phase_seconds = {
            phase: Histogram(
                f"{phase}_seconds", f"Time spent in the {phase} phase of a request",
                namespace=ns, registry=r, buckets=BUCKETS_S,
            )
            for phase in ("queued", "inputs", "execution", "delivery", "total")
        }
        self.comfyui_restarts = Counter(
            "comfyui_restarts", "ComfyUI process restarts after a crash or hang",
            namespace=ns, registry=r,
        )
        self.comfyui_state = Enum(
            "comfyui_state", "State of the supervised ComfyUI process",
            states=list(SUPERVISOR_STATES), namespace=ns, registry=r,
        )
        self.webhook_failures = Counter(
            "webhook_failures", "Webhook deliveries that failed after all retries",
            namespace=ns, registry=r,
        )
        self.s3_upload_retries = Counter(
            "s3_upload_retries", "S3 upload attempts that were retried", namespace=ns, registry=r
        )
        self.oom_retries = Counter(
            "oom_retries", "Prompts retried after ComfyUI ran out of memory",
            namespace=ns, registry=r,
        )
        self.startup_seconds = Gauge(
            "startup_seconds", "Seconds from process start to the end of each start-up phase",
            ["phase"], namespace=ns, registry=r,
        )

    # ---- recording ------------------------------------------------------------------

    def observe_request(self, outcome: str, timings: Any = None) -> None:
        """Count one finished request; `timings` is a Timings model or a dict of *_ms."""
        self.requests.labels(outcome if outcome in OUTCOMES else "internal_error").inc()
        if timings is None:
            return
        values: Mapping[str, Any] = (
            timings.model_dump() if hasattr(timings, "model_dump") else dict(timings)
        )
        for field, phase in _PHASES.items():
            ms = values.get(field)
            # A phase a request never reached stays out of its histogram.
            if isinstance(ms, (int, float)) and (ms > 0 or phase == "total"):
                self.phase_seconds[phase].observe(ms / 1000.0)

    def observe_error(self, error: BaseException | None, timings: Any = None) -> None:
        self.observe_request(outcome_for(error), timings)

    @contextmanager
    def inflight(self) -> Iterator[None]:
        self.inflight_requests.inc()
        try:
            yield
        finally:
            self.inflight_requests.dec()

    def set_queue_depth(self, depth: int) -> None:
        self.comfy_queue_depth.set(depth)

    def webhook_failed(self) -> None:
        self.webhook_failures.inc()

    def s3_upload_retried(self, n: int = 1) -> None:
        self.s3_upload_retries.inc(n)

    def oom_retried(self) -> None:
        self.oom_retries.inc()

    def startup_phase(self, phase: str, seconds: float) -> None:
        self.startup_seconds.labels(phase).set(seconds)

    def track_supervisor(self, supervisor: Any) -> None:
        """Follow a ComfySupervisor: state gauge, and one restart per "restarting"."""
        self.comfyui_state.state(supervisor.state)

        def on_change(state: str, reason: str) -> None:
            if state in SUPERVISOR_STATES:
                self.comfyui_state.state(state)
            if state == "restarting":
                self.comfyui_restarts.inc()

        supervisor.add_listener(on_change)

    # ---- reading --------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), e.g. value("comfy_bridge_requests_total",
        outcome="success"); for tests and the worker's own reports."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else got


METRICS = Metrics()
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("comfy_bridge_metrics", Metrics)


# Module-level shortcuts on the process-wide registry, for the JobRunner and delivery code.
def observe_request(outcome: str, timings: Any = None) -> None:
    METRICS.observe_request(outcome, timings)


def observe_error(error: BaseException | None, timings: Any = None) -> None:
    METRICS.observe_error(error, timings)


def inflight() -> Any:
    return METRICS.inflight()


def webhook_failed() -> None:
    METRICS.webhook_failed()


def s3_upload_retried(n: int = 1) -> None:
    METRICS.s3_upload_retried(n)


def track_supervisor(supervisor: Any) -> None:
    METRICS.track_supervisor(supervisor)


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of the app's Metrics (the process-wide one by default)."""
    metrics = request.app.get(METRICS_KEY, METRICS)
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def add_routes(app: web.Application, metrics: Metrics | None = None) -> None:
    """Add GET /metrics to `app`, serving `metrics` (default: the process-wide METRICS)."""
    app[METRICS_KEY] = metrics or METRICS
    app.router.add_get("/metrics", metrics_handler)
