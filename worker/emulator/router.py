"""A local stand-in for Vast's serverless router and autoscaler (run.vast.ai).

It serves the four routes a PyWorker and its callers use, with the real wire shapes, so
the unmodified `vastai` framework runs against it on a laptop, signatures included:

- `POST /route/` `{endpoint, api_key, cost, request_idx?}` -> a worker's auth_data
  `{url, reqnum, signature, endpoint, cost, request_idx}`, or, when no worker is ready,
  `{endpoint, request_idx, status}` with no `url` (callers poll again with request_idx).
- `GET /pubkey/` -> the PEM public key the workers verify signatures with.
- `POST /worker_status/` <- the workers' reports (load, max_perf, error_msg...).
- `POST /delete_requests/` <- the workers' finished-request notices.

The signature is RSA PKCS#1 v1.5 over SHA-256 of `json.dumps({"url": url}, indent=4,
sort_keys=True)`, which is what the framework verifies. For inspection it adds
`GET /reports` (everything received) and `GET /workers` (what it believes of each).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from typing import Any, Callable

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel

from comfy_bridge import logs

log = logs.get(__name__)


def signed_message(url: str) -> bytes:
    """The bytes the framework checks the signature against (see its __check_signature)."""
    return json.dumps({"url": url}, indent=4, sort_keys=True).encode()


class WorkerView(BaseModel):
    """The router's belief about one worker, from its latest report."""

    id: int
    url: str = ""
    loaded: bool = False
    error_msg: str = ""
    cur_load: float = 0.0
    max_perf: float = 0.0
    reports: int = 0
    last_report_at: float = 0.0
    routed_since_report: float = 0.0

    @property
    def ready(self) -> bool:
        return self.loaded and not self.error_msg and bool(self.url)


class RouterEmulator:
    """The router on loopback. `await start()` returns its base URL; `await stop()`."""

    def __init__(self, *, endpoint: str = "local", api_key: str = "local") -> None:
        self.endpoint = endpoint
        self.api_key = api_key
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.reports: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.routed: list[dict[str, Any]] = []
        self.workers: dict[int, WorkerView] = {}
        self._reqnum = itertools.count(1)
        self._request_idx = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # --- signing -------------------------------------------------------------------------

    def sign(self, url: str) -> str:
        sig = self._key.sign(signed_message(url), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(sig).decode()

    def auth_data(self, url: str, *, cost: float = 1.0, request_idx: int | None = None) -> dict[str, Any]:
        """Signed auth_data for `url`, as /route/ would hand it out (for tests and tools)."""
        return {
            "url": url,
            "reqnum": next(self._reqnum),
            "signature": self.sign(url),
            "endpoint": self.endpoint,
            "cost": cost,
            "request_idx": request_idx if request_idx else next(self._request_idx),
        }

    # --- HTTP ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/route/", self._route)
        app.router.add_get("/pubkey/", self._pubkey)
        app.router.add_post("/worker_status/", self._worker_status)
        app.router.add_post("/delete_requests/", self._delete_requests)
        app.router.add_get("/reports", self._reports)
        app.router.add_get("/workers", self._workers)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound[1]}"
        log.info("router emulator listening", extra={"fields": {"url": self.url}})
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _route(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        refused = self._check_route(str(body.get("endpoint")), body.get("api_key"))
        if refused is not None:
            return refused
        try:
            cost = float(body.get("cost", 0) or 0)
            request_idx = int(body.get("request_idx", 0) or 0)
        except (TypeError, ValueError):
            return web.json_response({"error": "cost and request_idx must be numbers"}, status=400)
        request_idx = request_idx or next(self._request_idx)
        candidates = self._candidates(str(body.get("endpoint")))
        worker = self._pick(candidates)
        if worker is None:
            counts = {"ready": 0, "loading": 0, "error": 0}
            for w in candidates:
                counts["error" if w.error_msg else "loading" if not w.loaded else "ready"] += 1
            return web.json_response(
                {"endpoint": self.endpoint, "request_idx": request_idx, "status": counts}
            )
        worker.routed_since_report += cost
        auth = self.auth_data(worker.url, cost=cost, request_idx=request_idx)
        self.routed.append({"worker_id": worker.id, **auth, "at": time.time()})
        return web.json_response(auth)

    def _check_route(self, endpoint: str, api_key: Any) -> web.Response | None:
        """An error answer for a /route/ call this router does not serve (the control plane
        in control_plane.py serves the endpoints created through it instead)."""
        if api_key != self.api_key:
            return web.json_response({"error": "invalid api_key"}, status=401)
        if endpoint != self.endpoint:
            return web.json_response({"error": f"endpoint {endpoint!r} not found"}, status=404)
        return None

    def _candidates(self, endpoint: str) -> list[WorkerView]:
        """The workers serving `endpoint` (here: every worker that reported)."""
        return list(self.workers.values())

    def _pick(self, candidates: list[WorkerView]) -> WorkerView | None:
        """The ready worker with the shortest expected wait, as the real router balances."""
        ready = [w for w in candidates if w.ready]
        if not ready:
            return None
        return min(ready, key=lambda w: (w.cur_load + w.routed_since_report) / max(w.max_perf, 1e-6))

    async def _pubkey(self, request: web.Request) -> web.Response:
        return web.Response(text=self.public_pem, content_type="text/plain")

    async def _worker_status(self, request: web.Request) -> web.Response:
        report = await self._json(request)
        report["received_at"] = time.time()
        self.reports.append(report)
        try:
            wid = int(report.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return web.json_response({"error": "id must be an integer"}, status=400)
        w = self.workers.setdefault(wid, WorkerView(id=wid))
        w.url = str(report.get("url") or w.url)
        w.loaded = w.loaded or float(report.get("loadtime") or 0) > 0
        w.error_msg = str(report.get("error_msg") or "")
        w.cur_load = float(report.get("cur_load") or 0)
        w.max_perf = float(report.get("max_perf") or 0)
        w.reports += 1
        w.last_report_at = report["received_at"]
        w.routed_since_report = 0.0
        self._notify()
        return web.json_response({"ok": True})

    async def _delete_requests(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        for item in body.get("requests") or []:
            if isinstance(item, dict):
                self.deleted.append({"worker_id": body.get("worker_id"), **item})
        self._notify()
        return web.json_response({"ok": True})

    async def _reports(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"worker_status": self.reports, "delete_requests": self.deleted, "routed": self.routed}
        )

    async def _workers(self, request: web.Request) -> web.Response:
        return web.json_response([w.model_dump() | {"ready": w.ready} for w in self.workers.values()])

    # --- waiting (in-process callers) ---------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every report); its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("router emulator: condition not met in time")
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass
