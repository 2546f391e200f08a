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
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

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


def install(backend) -> HonestMetrics:  # noqa: ANN001 - vastai Backend
    """Swap a fresh HonestMetrics onto a just-built framework Backend."""
    old = backend.metrics
    metrics = HonestMetrics()
    metrics._set_version(old.version)
    metrics._set_mtoken(old.mtoken)
    backend.metrics = metrics
    return metrics
