"""Routes that hand out spooled outputs while they wait for S3 (or were too big to inline).

    GET  /outputs/{spool_key}                 the file, streamed from disk
    POST /outputs/fetch  {"spool_key": "..."}  the same, for the worker's signed route
                                               (worker/pyworker.py forwards its payload here)

A 502 lists each undelivered output with its `spool_key` (`<request_id>/<run_id>/<file>`,
comfy_bridge/delivery/spool.py). The bridge listens on loopback only; from outside, the
PyWorker's `/outputs/fetch` route is the way in, and like every PyWorker route it checks
Vast's signature first. Unknown or delivered-since keys get 404 `output_not_found`.
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfy_bridge.delivery.base import guess_mimetype
from comfy_bridge.delivery.spool import Spool
from comfy_bridge.errors import BadRequest, BridgeError, OutputNotFound

FETCH_ROUTE = "/outputs/fetch"


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spool_key: str = Field(min_length=1, max_length=1024)


def _failure(err: BridgeError) -> web.Response:
    body = {"id": None, "status": "failed", "error": err.to_dict()}
    return web.json_response(body, status=err.status)


class FetchRoutes:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def _file(self, spool_key: str) -> web.StreamResponse:
        path = self.spool.resolve(spool_key)
        if path is None:
            return _failure(OutputNotFound(
                f"no spooled output under {spool_key!r}: it was uploaded since (see the webhook) "
                "or evicted by the spool budget", spool_key=spool_key))
        return web.FileResponse(path, headers={"Content-Type": guess_mimetype(path.name)})

    async def get(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["spool_key"])

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        try:
            parsed = FetchRequest.model_validate(json.loads(await request.read()))
        except (ValueError, ValidationError):
            return _failure(BadRequest('send {"spool_key": "<request_id>/<run_id>/<filename>"} '
                                       "as listed in the 502's output entries"))
        return self._file(parsed.spool_key)

    def register(self, app: web.Application) -> None:
        app.router.add_get("/outputs/{spool_key:.+}", self.get)
        app.router.add_post(FETCH_ROUTE, self.fetch)


def add_routes(app: web.Application, spool: Spool) -> None:
    FetchRoutes(spool).register(app)
