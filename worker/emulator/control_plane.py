"""A local, stateful stand-in for Vast's console API and autoscaler, beside the router.

It answers the calls the real `vastai` 1.9.1 SDK makes (paths and bodies as its offer,
endpoint and billing calls send them), on the same
host as the router emulator (worker/emulator/router.py), so `VastAI(server_url=<it>)`
reaches the console calls and, since the URL is not the SDK's default, the autoscaler
calls too:

    GET  /api/v0/users/current                 {"id", "username"}
    GET  /api/v0/template/?select_filters=...  {"success", "templates": [...]} (eq filters)
    POST /api/v0/template/                     {"success", "template": {"id", "hash_id", ...}}
    PUT  /api/v1/template/  {id, hash_id, ...} a new version: same id, a new hash_id
    DELETE /api/v0/template/ {hash_id | template_id}
    GET/POST /api/v0/endptjobs/, PUT/DELETE /api/v0/endptjobs/{id}/   {"success", "results"|"result"}
    GET/POST /api/v0/autojobs/,  PUT/DELETE /api/v0/autojobs/{id}/
    POST /get_endpoint_workers/ {id}           [{"id", "status", "measured_perf", ...}]
    POST /update_workers/ {workergroup_id}     rolling update: the group's workers replaced

Updates store what they are sent, nulls included, as the real API's PUTs do: a client
that leaves a field out sees it wiped. Every write is recorded (`GET /_emulator/writes`).
On demand (`POST /_emulator/rate_limit {"count", "retry_after"}`) the next writes get 429
with Retry-After; `POST /_emulator/fail {"method", "path", "status", "count"}` makes
matching calls fail. A workergroup starts one local worker (worker/emulator/local_workers.py)
when the emulator knows a ComfyUI, and /route/ then routes the endpoint's name to it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from comfy_bridge import logs
from worker.deploy.config import parse_docker_options
from worker.emulator.local_workers import LocalWorkers
from worker.emulator.router import RouterEmulator, WorkerView

log = logs.get(__name__)

USER_ID = 4242
TEMPLATE_FIELDS = ("name", "image", "tag", "href", "repo", "env", "onstart", "jup_direct", "ssh_direct",
                   "use_jupyter_lab", "runtype", "use_ssh", "jupyter_dir", "docker_login_repo", "extra_filters",
                   "recommended_disk_space", "readme", "readme_visible", "desc", "private")
ENDPOINT_FIELDS = ("min_load", "min_cold_load", "target_util", "cold_mult", "cold_workers", "max_workers",
                   "endpoint_name", "endpoint_state", "max_queue_time", "target_queue_time", "inactivity_timeout")
WORKERGROUP_FIELDS = ("template_hash", "template_id", "search_params", "launch_args", "gpu_ram",
                      "endpoint_name", "endpoint_id")


class ControlPlane(RouterEmulator):
    """Router + console API + autoscaler on one loopback port."""

    def __init__(self, *, api_key: str = "local", comfyui_url: str | None = None,
                 instances_dir: Path | None = None, worker_env: dict[str, str] | None = None,
                 endpoint: str = "local") -> None:
        super().__init__(endpoint=endpoint, api_key=api_key)
        self.templates: dict[int, dict[str, Any]] = {}
        self.endpoints: dict[int, dict[str, Any]] = {}
        self.workergroups: dict[int, dict[str, Any]] = {}
        self.writes: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str, int]] = []  # every console/autoscaler call: method, path, status
        self.comfyui_url = comfyui_url
        self._instances_dir = instances_dir
        self._worker_env = worker_env or {}
        self.local: LocalWorkers | None = None
        self._ids = itertools.count(101)
        self._instance_ids = itertools.count(9001)
        self._rate_limit = {"count": 0, "retry_after": 1.0}
        self._faults: list[dict[str, Any]] = []

    # --- the app ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._gate)
        r = app.router
        r.add_get("/api/v0/users/current", self._user)
        r.add_get("/api/v0/template/", self._search_templates)
        r.add_post("/api/v0/template/", self._create_template)
        r.add_put("/api/v1/template/", self._update_template)
        r.add_delete("/api/v0/template/", self._delete_template)
        r.add_get("/api/v0/endptjobs/", self._list(self.endpoints))
        r.add_post("/api/v0/endptjobs/", self._create_endpoint)
        r.add_put("/api/v0/endptjobs/{id}/", self._update_endpoint)
        r.add_delete("/api/v0/endptjobs/{id}/", self._delete_endpoint)
        r.add_get("/api/v0/autojobs/", self._list(self.workergroups))
        r.add_post("/api/v0/autojobs/", self._create_workergroup)
        r.add_put("/api/v0/autojobs/{id}/", self._update_workergroup)
        r.add_delete("/api/v0/autojobs/{id}/", self._delete_workergroup)
        r.add_post("/get_endpoint_workers/", self._endpoint_workers)
        r.add_post("/update_workers/", self._update_workers)
        r.add_post("/_emulator/rate_limit", self._set_rate_limit)
        r.add_post("/_emulator/fail", self._set_fault)
        r.add_get("/_emulator/writes", lambda _: web.json_response(self.writes))
        r.add_get("/_emulator/state", lambda _: web.json_response(self.state()))
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        url = await super().start(host, port)
        self.local = LocalWorkers(self.comfyui_url, url, root=self._instances_dir, extra_env=self._worker_env)
        return url

    async def stop(self) -> None:
        if self.local is not None:
            await self.local.stop_all()
        await super().stop()

    def state(self) -> dict[str, Any]:
        return {"templates": list(self.templates.values()), "endpoints": list(self.endpoints.values()),
                "workergroups": list(self.workergroups.values())}

    def rate_limit(self, count: int, retry_after: float = 1.0) -> None:
        self._rate_limit = {"count": count, "retry_after": retry_after}

    def fail(self, method: str, path: str, status: int = 500, count: int = 1) -> None:
        self._faults.append({"method": method.upper(), "path": path, "status": status, "count": count})

    # --- auth, faults, rate limit, write log ------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_emulator/") or path in ("/route/", "/pubkey/", "/worker_status/",
                                                      "/delete_requests/", "/reports", "/workers"):
            return await handler(request)
        try:
            response = await self._gated(request, handler)
        except web.HTTPException as e:
            self.calls.append((request.method, path, e.status))
            raise
        self.calls.append((request.method, path, response.status))
        return response

    async def _gated(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"success": False, "error": "invalid_user", "msg": "Invalid API key"},
                                     status=401)
        for fault in self._faults:
            if fault["count"] > 0 and fault["method"] == request.method and fault["path"] == path:
                fault["count"] -= 1
                return web.json_response({"success": False, "msg": "injected failure"}, status=fault["status"])
        write = request.method != "GET" and path != "/get_endpoint_workers/"
        if write and self._rate_limit["count"] > 0:
            self._rate_limit["count"] -= 1
            return web.json_response({"success": False, "error": "rate_limited", "msg": "too many requests"},
                                     status=429, headers={"Retry-After": str(self._rate_limit["retry_after"])})
        response = await handler(request)
        if write and response.status < 400:
            body = await self._body(request)
            body.pop("api_key", None)
            self.writes.append({"method": request.method, "path": path, "body": body, "at": time.time()})
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.body_exists:
            return {}
        try:
            body = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        return body if isinstance(body, dict) else {}

    async def _set_rate_limit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.rate_limit(int(body.get("count", 1)), float(body.get("retry_after", 1)))
        return web.json_response({"ok": True})

    async def _set_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.fail(str(body["method"]), str(body["path"]), int(body.get("status", 500)), int(body.get("count", 1)))
        return web.json_response({"ok": True})

    # --- templates -----------------------------------------------------------------------

    async def _user(self, request: web.Request) -> web.Response:
        return web.json_response({"id": USER_ID, "username": "local", "api_key": self.api_key})

    async def _search_templates(self, request: web.Request) -> web.Response:
        try:
            filters = json.loads(request.query.get("select_filters", "{}"))
        except json.JSONDecodeError:
            return web.json_response({"success": False, "msg": "select_filters must be JSON"}, status=400)
        found = [t for t in self.templates.values()
                 if all(not isinstance(c, dict) or "eq" not in c or t.get(k) == c["eq"] for k, c in filters.items())]
        return web.json_response({"success": True, "templates": found})

    @staticmethod
    def _hash(template: dict[str, Any], version: int) -> str:
        content = json.dumps({k: template.get(k) for k in TEMPLATE_FIELDS}, sort_keys=True)
        return hashlib.md5(f"{template['id']}:{version}:{content}".encode()).hexdigest()

    async def _create_template(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not body.get("image"):
            return web.json_response({"success": False, "msg": "image is required"}, status=400)
        t = {k: body.get(k) for k in TEMPLATE_FIELDS} | {"id": next(self._ids), "creator_id": USER_ID,
                                                          "version": 1, "created_at": time.time()}
        t["hash_id"] = self._hash(t, 1)
        self.templates[t["id"]] = t
        return web.json_response({"success": True, "template": t})

    async def _update_template(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        t = self.templates.get(body.get("id"))  # type: ignore[arg-type]
        if t is None or t["hash_id"] != body.get("hash_id"):
            return web.json_response({"success": False, "msg": "no such template (id and hash_id must match)"},
                                     status=404)
        t.update({k: body.get(k) for k in TEMPLATE_FIELDS})
        t["version"] += 1
        t["hash_id"] = self._hash(t, t["version"])  # every edit is a new version with a new hash
        return web.json_response({"success": True, "template": t})

    async def _delete_template(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        match = [i for i, t in self.templates.items()
                 if t["hash_id"] == body.get("hash_id") or t["id"] == body.get("template_id")]
        if not match:
            return web.json_response({"success": False, "msg": "no such template"}, status=404)
        for i in match:
            del self.templates[i]
        return web.json_response({"success": True})

    # --- endpoints and workergroups ------------------------------------------------------

    def _list(self, table: dict[int, dict[str, Any]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"success": True, "results": list(table.values())})
        return handler

    @staticmethod
    def _row_id(request: web.Request, table: dict[int, dict[str, Any]]) -> int:
        try:
            row = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPBadRequest(text="id must be an integer") from None
        if row not in table:
            raise web.HTTPNotFound(text=json.dumps({"success": False, "msg": f"no such id {row}"}),
                                   content_type="application/json")
        return row

    async def _create_endpoint(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not body.get("endpoint_name"):
            return web.json_response({"success": False, "msg": "endpoint_name is required"}, status=400)
        e = {k: body.get(k) for k in ENDPOINT_FIELDS} | {"id": next(self._ids), "user_id": USER_ID,
                                                         "api_key": self.api_key}
        e["endpoint_state"] = e["endpoint_state"] or "active"
        self.endpoints[e["id"]] = e
        return web.json_response({"success": True, "result": e["id"]})

    async def _update_endpoint(self, request: web.Request) -> web.Response:
        row = self._row_id(request, self.endpoints)
        body = await self._body(request)
        self.endpoints[row].update({k: body.get(k) for k in ENDPOINT_FIELDS})  # nulls too, as sent
        return web.json_response({"success": True})

    async def _delete_endpoint(self, request: web.Request) -> web.Response:
        row = self._row_id(request, self.endpoints)
        for gid in [g for g, wg in self.workergroups.items() if wg["endpoint_id"] == row]:
            await self._drop_group(gid)
        del self.endpoints[row]
        return web.json_response({"success": True})

    async def _create_workergroup(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        endpoint = self.endpoints.get(body.get("endpoint_id")) or next(  # type: ignore[arg-type]
            (e for e in self.endpoints.values() if e["endpoint_name"] == body.get("endpoint_name")), None)
        if endpoint is None:
            return web.json_response({"success": False, "msg": "no such endpoint"}, status=400)
        if not any(t["hash_id"] == body.get("template_hash") for t in self.templates.values()):
            return web.json_response({"success": False, "msg": "template_hash names no template"}, status=400)
        g = {k: body.get(k) for k in WORKERGROUP_FIELDS} | {"id": next(self._ids), "user_id": USER_ID}
        g["endpoint_id"] = endpoint["id"]
        self.workergroups[g["id"]] = g
        await self._recruit(g)
        return web.json_response({"success": True, "result": g["id"]})

    async def _update_workergroup(self, request: web.Request) -> web.Response:
        row = self._row_id(request, self.workergroups)
        body = await self._body(request)
        g = self.workergroups[row]
        old_hash = g["template_hash"]
        g.update({k: body.get(k) for k in WORKERGROUP_FIELDS})
        if g["template_hash"] != old_hash:  # workers move to the new template
            await self._replace_workers(row)
        return web.json_response({"success": True})

    async def _delete_workergroup(self, request: web.Request) -> web.Response:
        await self._drop_group(self._row_id(request, self.workergroups))
        return web.json_response({"success": True})

    async def _drop_group(self, gid: int) -> None:
        assert self.local is not None
        for inst in self.local.of_group(gid):
            await self.local.stop(inst.id)
            self.workers.pop(inst.id, None)
        del self.workergroups[gid]

    async def _recruit(self, group: dict[str, Any]) -> None:
        assert self.local is not None
        template = next((t for t in self.templates.values() if t["hash_id"] == group["template_hash"]), {})
        endpoint = self.endpoints.get(group["endpoint_id"], {})
        _, template_env = parse_docker_options(template.get("env"))
        await self.local.start(next(self._instance_ids), workergroup_id=group["id"],
                               template_hash=group["template_hash"], template_env=template_env,
                               max_queue_time=endpoint.get("max_queue_time"))

    async def _replace_workers(self, gid: int) -> None:
        assert self.local is not None
        for inst in self.local.of_group(gid):
            await self.local.stop(inst.id)
            self.workers.pop(inst.id, None)
        await self._recruit(self.workergroups[gid])

    async def _update_workers(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        gid = body.get("workergroup_id")
        if gid not in self.workergroups:
            return web.json_response({"success": False, "msg": f"no workergroup {gid}"}, status=404)
        await self._replace_workers(int(gid))  # type: ignore[arg-type]
        return web.json_response({"success": True, "msg": "rolling update started"})

    async def _endpoint_workers(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        eid = body.get("id")
        if eid not in self.endpoints:
            return web.json_response({"success": False, "msg": f"no endpoint {eid}"}, status=404)
        out = []
        for w in self._workers_of(int(eid)):  # type: ignore[arg-type]
            status = "error" if w.error_msg else "idle" if w.ready and w.cur_load == 0 else \
                "running" if w.ready else "loading"
            out.append({"id": w.id, "status": status, "measured_perf": w.max_perf, "cur_load": w.cur_load,
                        "error_msg": w.error_msg, "workergroup_id": self._group_of(w.id)})
        return web.json_response(out)

    # --- routing the endpoints created here ----------------------------------------------

    def _group_of(self, instance_id: int) -> int | None:
        inst = self.local.instances.get(instance_id) if self.local else None
        return inst.workergroup_id if inst else None

    def _workers_of(self, endpoint_id: int) -> list[WorkerView]:
        groups = {g for g, wg in self.workergroups.items() if wg["endpoint_id"] == endpoint_id}
        return [w for w in self.workers.values() if self._group_of(w.id) in groups]

    def _named(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.endpoints.values() if e["endpoint_name"] == name), None)

    def _check_route(self, endpoint: str, api_key: Any) -> web.Response | None:
        if self._named(endpoint) is None:
            return super()._check_route(endpoint, api_key)
        if api_key != self.api_key:
            return web.json_response({"error": "invalid api_key"}, status=401)
        return None

    def _candidates(self, endpoint: str) -> list[WorkerView]:
        named = self._named(endpoint)
        return super()._candidates(endpoint) if named is None else self._workers_of(named["id"])
