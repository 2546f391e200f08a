"""A local stand-in for a RunPod serverless endpoint running worker-comfyui, as the
load test's runpod: target sees one:

    POST /v2/{endpoint_id}/runsync   Authorization: Bearer KEY   {"input": {"workflow", "images"?}}
      -> {id, status: "COMPLETED", output: {images: [{filename, type: "base64", data}]},
          delayTime, executionTime, workerId}
         status "FAILED" with `error` when the workflow failed; "IN_QUEUE" when the
         job outlives the synchronous wait, then GET /v2/{endpoint_id}/status/{id}
    401 for a wrong key, 429 when rate limited (empty-ish body)

The job itself runs on a comfy_bridge in front of the ComfyUI double (the bridge's
execution_ms becomes executionTime). Faults: `rate_limit` (next N runsync calls get
429), `queue_next` (the next N jobs answer IN_QUEUE first and must be polled).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class RunPodStandIn:
    endpoint_id: str
    api_key: str
    bridge_url: str
    session: aiohttp.ClientSession
    rate_limit: int = 0
    queue_next: int = 0
    polls: int = 0
    calls: int = 0
    _jobs: dict[str, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/{endpoint}/runsync", self._runsync)
        app.router.add_get("/v2/{endpoint}/status/{job}", self._status)
        return app

    def _check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if request.match_info["endpoint"] != self.endpoint_id:
            return web.json_response({"error": "endpoint not found"}, status=404)
        return None

    async def _runsync(self, request: web.Request) -> web.Response:
        if (refused := self._check(request)) is not None:
            return refused
        self.calls += 1
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return web.json_response({"error": "rate limited"}, status=429)
        body = await request.json()
        job_id = f"sync-{next(self._ids)}"
        task = asyncio.create_task(self._execute(job_id, body["input"]))
        if self.queue_next > 0:
            self.queue_next -= 1
            self._jobs[job_id] = task
            return web.json_response({"id": job_id, "status": "IN_QUEUE"})
        return web.json_response(await task)

    async def _status(self, request: web.Request) -> web.Response:
        if (refused := self._check(request)) is not None:
            return refused
        self.polls += 1
        task = self._jobs.get(request.match_info["job"])
        if task is None:
            return web.json_response({"error": "job not found"}, status=404)
        if not task.done():
            return web.json_response({"id": request.match_info["job"], "status": "IN_PROGRESS"})
        return web.json_response(task.result())

    async def _execute(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        payload = {"input": {"workflow": job["workflow"], "return_outputs_as_base64": True}}
        if job.get("images"):
            payload["input"]["images"] = job["images"]
        async with self.session.post(f"{self.bridge_url}/generate/sync", json=payload) as r:
            answer = await r.json()
        base = {"id": job_id, "workerId": "standin-worker-1"}
        if r.status != 200:
            return {**base, "status": "FAILED", "error": answer["error"]["message"], "delayTime": 1,
                    "executionTime": 0}
        timings = answer["timings"]
        images = [{"filename": o["filename"], "type": "base64", "data": o["data"]} for o in answer["output"]]
        return {**base, "status": "COMPLETED", "output": {"images": images},
                "delayTime": round(timings["queued_ms"]), "executionTime": round(timings["execution_ms"])}
