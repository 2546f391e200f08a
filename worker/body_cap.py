"""A size cap on request bodies at the public PyWorker port, before any signature check.

The `vastai` framework builds its aiohttp app with `client_max_size=0` (no limit) and
reads the whole JSON body before it checks the auth_data signature, so anyone who can
reach the port could make the worker buffer gigabytes. Every POST route it serves
(the `/generate/sync` route of worker/pyworker.py and the framework's own `/session/*`
routes) is wrapped here: a declared Content-Length over the cap is refused at once, and
a chunked body stops being read at the cap (aiohttp's own limit, set on the request).
Both answer 413 with the bridge's failure body (comfy_bridge/errors.py PayloadTooLarge).

The default cap is the bridge's COMFY_BRIDGE_MAX_BODY_BYTES plus room for auth_data, so
whatever the bridge accepts still passes; COMFY_WORKER_MAX_BODY_BYTES overrides it.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.errors import PayloadTooLarge
from comfy_bridge.jobs.serving import failure_body

log = logs.get(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# auth_data (url, signature, request_idx...) around the bridge's payload: well under this.
ENVELOPE_BYTES = 64 * 1024
# The framework's own POST routes that read a JSON body (the PyWorker server of vastai 1.9.1).
_BACKEND_ROUTES = (
    "session_create_handler", "session_end_handler", "session_get_handler", "session_health_handler",
)


def default_cap() -> int:
    from comfy_bridge.settings import BridgeSettings

    return BridgeSettings().max_body_bytes + ENVELOPE_BYTES


def _too_large(cap: int, size: int | None) -> web.Response:
    said = f"{size} bytes" if size is not None else "more than that"
    err = PayloadTooLarge(
        f"the request body is {said}, over this worker's {cap} byte limit "
        "(COMFY_WORKER_MAX_BODY_BYTES); send large inputs as https:// or s3:// URLs instead",
        max_bytes=cap,
    )
    log.warning("refused a request body over %d bytes at the public port", cap)
    return web.json_response(failure_body(None, err), status=err.status)


def capped(handler: Handler, cap: int) -> Handler:
    """`handler`, refusing bodies over `cap` bytes without reading them whole."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        declared = request.content_length
        if declared is not None and declared > cap:
            return _too_large(cap, declared)
        try:
            return await handler(request.clone(client_max_size=cap))
        except web.HTTPRequestEntityTooLarge:
            return _too_large(cap, None)

    return guarded


def install(worker: Any, cap: int) -> None:
    """Wrap every body-reading POST route of a just-built framework Worker (before run)."""
    if cap <= 0:
        raise ValueError(f"the body cap must be positive, not {cap}")
    worker.routes = [web.post(route.path, capped(route.handler, cap)) for route in worker.routes]
    backend = worker.backend
    for name in _BACKEND_ROUTES:
        handler = getattr(backend, name, None)
        if handler is not None:
            setattr(backend, name, capped(handler, cap))
