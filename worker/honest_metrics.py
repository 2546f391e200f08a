"""Metrics that tell the autoscaler what really happened to each request.

The framework marks every request its handler answered as a success, whatever the HTTP
status, so a generation that failed in 5 ms adds to `cur_perf` as if it were served,
and the autoscaler sees a fast, healthy worker. Here the response relay records the
status it passed on in a context variable; the framework calls `_request_success` in the
same task right after the relay returns, so the status is read back exactly for that
request, and anything but 2xx is recorded as an error (in `/delete_requests/` with
`success: false, status: "Error"`, and not in cur_perf).

It also reports at once when the worker becomes ready or errors: the framework only
reports on request traffic or every 10 s, which delays both by up to 10 s.

All of this leans on private parts of `vastai` (pinned in pyproject.toml): the Metrics
hooks below and `Backend.metrics`. `install` checks they are there and raises
FrameworkMismatch naming what is missing, so a `vastai` upgrade that moves them stops
the worker at start instead of silently reporting failed generations as served work.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass
from importlib import metadata

from vastai.serverless.server.lib.data_types import RequestMetrics
from vastai.serverless.server.lib.metrics import Metrics

_relayed_status: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "worker_relayed_status", default=None
)


def note_status(status: int) -> None:
    """Called by the response relay with the status it is passing to the caller."""
    _relayed_status.set(status)


@dataclass
class HonestMetrics(Metrics):
    def _request_success(self, request: RequestMetrics) -> None:
        status = _relayed_status.get()
        if status is not None and not 200 <= status < 300:
            self._request_errored(request, f"the generation failed with HTTP {status}")
            return
        super()._request_success(request)

    def _model_loaded(self, max_throughput: float) -> None:
        super()._model_loaded(max_throughput)
        self.update_pending = True

    def _model_errored(self, error_msg: str) -> None:
        super()._model_errored(error_msg)
        self.update_pending = True


# What this module overrides, calls or sets on the framework's Metrics.
_HOOKS = ("_request_success", "_request_errored", "_model_loaded", "_model_errored",
          "_set_version", "_set_mtoken")
_FIELDS = ("update_pending",)


class FrameworkMismatch(RuntimeError):
    """The installed `vastai` lacks internals the honest metrics rely on."""


def missing_internals(backend=None) -> list[str]:  # noqa: ANN001 - vastai Backend
    """Names of the framework internals this module needs that are absent (empty: all there)."""
    missing = [f"Metrics.{name}" for name in _HOOKS if not callable(getattr(Metrics, name, None))]
    fields = {f.name for f in dataclasses.fields(Metrics)} if dataclasses.is_dataclass(Metrics) else set()
    missing += [f"Metrics.{name} (dataclass field)" for name in _FIELDS if name not in fields]
    if backend is not None:
        old = getattr(backend, "metrics", None)
        if not isinstance(old, Metrics):
            missing.append("Backend.metrics (a Metrics)")
        else:
            missing += [f"Metrics().{name}" for name in ("version", "mtoken") if not hasattr(old, name)]
    return missing


def install(backend) -> HonestMetrics:  # noqa: ANN001 - vastai Backend
    """Swap a fresh HonestMetrics onto a just-built framework Backend (FrameworkMismatch if
    the framework lacks what that needs)."""
    missing = missing_internals(backend)
    if missing:
        try:
            version = metadata.version("vastai")
        except metadata.PackageNotFoundError:
            version = "unknown"
        raise FrameworkMismatch(
            f"vastai {version} lacks {', '.join(missing)}, which worker/honest_metrics.py relies on "
            "to report failed generations as errors; install the vastai version pinned in "
            "pyproject.toml (or update worker/honest_metrics.py for this one)"
        )
    old = backend.metrics
    metrics = HonestMetrics()
    metrics._set_version(old.version)
    metrics._set_mtoken(old.mtoken)
    backend.metrics = metrics
    return metrics
