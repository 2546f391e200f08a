"""Generations started by MCP tool calls, kept running past the client's tool timeout.

Each tool call starts a Job: a task that reads the request's event stream to its end
whatever happens to the call that started it. The call waits at most the tool timeout
(default 50 s, below the usual 60 s of MCP clients), passing progress on as it comes;
if the job is not done by then it answers with a job handle (`job_id`, the request id)
and `get_result(job_id)` waits again, as often as needed. No work is lost to an
agent's timeout, and a finished job's result stays available for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import mcp_types as types

from comfy_bridge import logs
from comfy_bridge.errors import BridgeError
from comfy_bridge.jobs import stream_protocol as sp
from worker.client import CallError
from worker.mcp import tools
from worker.mcp.backend import Backend
from worker.progress_bar import describe

log = logs.get(__name__)

# (progress 0..100, message) -> sent as an MCP progress notification.
Reporter = Callable[[float, str], Awaitable[None]]
_KEEP_FINISHED = 256  # finished jobs whose results can still be fetched


@dataclass
class Job:
    id: str
    task: asyncio.Task[types.CallToolResult] | None = None
    listeners: set[Callable[[Any], None]] = field(default_factory=set)
    last: Any = None  # the latest event, for a handle's status line
    finished_at: float | None = None


class JobStore:
    def __init__(self, backend: Backend, *, tool_timeout_s: float = 50.0, deadline_s: float = 3600.0,
                 image_cap_bytes: int = tools.DEFAULT_IMAGE_CAP_BYTES) -> None:
        self.backend = backend
        self.tool_timeout_s = tool_timeout_s
        self.deadline_s = deadline_s
        self.image_cap_bytes = image_cap_bytes
        self.jobs: dict[str, Job] = {}
        self._http: aiohttp.ClientSession | None = None

    def start(self, job_input: dict[str, Any]) -> Job:
        job_input.setdefault("request_id", f"mcp-{uuid.uuid4().hex[:16]}")
        job = Job(job_input["request_id"])
        job.task = asyncio.create_task(self._run(job, job_input), name=f"mcp-job-{job.id}")
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def _run(self, job: Job, job_input: dict[str, Any]) -> types.CallToolResult:
        deadline_s = float(job_input.get("timeout_s") or self.deadline_s) + 60.0
        try:
            async with contextlib.aclosing(self.backend.stream(job_input, deadline_s)) as events:
                async for event in events:
                    job.last = event
                    for listener in list(job.listeners):
                        listener(event)
                    if isinstance(event, sp.ResultEvent):
                        if self._http is None:
                            self._http = aiohttp.ClientSession()
                        return await tools.result_content(event.response, self._http, self.image_cap_bytes)
            return tools.error_result(f"request {job.id}: the stream ended without a result")
        except BridgeError as err:
            status = getattr(err, "http_status", err.status)
            retry = " (retriable: call the tool again)" if err.retriable else ""
            return tools.error_result(f"request {job.id} failed with HTTP {status} ({err.type}): {err.message}{retry}")
        except CallError as err:
            return tools.error_result(f"request {job.id} could not be run: {type(err).__name__}: {err}")
        finally:
            job.finished_at = time.monotonic()
            self._forget_old()

    async def wait(self, job: Job, report: Reporter | None) -> types.CallToolResult:
        """The job's result within the tool timeout, else its handle; progress meanwhile."""
        assert job.task is not None
        events: asyncio.Queue[Any] = asyncio.Queue()
        job.listeners.add(events.put_nowait)
        deadline = time.monotonic() + self.tool_timeout_s
        sent = -1.0
        try:
            while not job.task.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, job.task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                sent = await _report(report, getter.result(), sent)
        finally:
            job.listeners.discard(events.put_nowait)
        if job.task.done():
            return job.task.result()
        return _handle(job, self.tool_timeout_s)

    def _forget_old(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.finished_at is not None),
                          key=lambda j: j.finished_at or 0)
        for old in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            self.jobs.pop(old.id, None)

    async def aclose(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        await asyncio.gather(*(j.task for j in self.jobs.values() if j.task is not None), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.backend.aclose()


async def _report(report: Reporter | None, event: Any, sent: float) -> float:
    """Send one progress notification for an event; the value only ever increases."""
    if report is None:
        return sent
    fraction = getattr(event, "fraction", None)
    value = 100.0 * fraction if isinstance(fraction, float) else max(sent, 0.0)
    message = describe(event)
    if message is None or value <= sent:
        return sent
    try:
        await report(value, message)
    except Exception as exc:  # a client gone quiet must not stop the job
        log.debug("progress notification not sent: %s", exc)
    return value


def _handle(job: Job, waited_s: float) -> types.CallToolResult:
    last = (describe(job.last) if job.last is not None else None) or "submitted"
    text = (f"The generation is still running after {waited_s:g}s ({last}). Nothing is lost: "
            f"call get_result with job_id={job.id!r} to wait for it again.")
    return types.CallToolResult(content=[types.TextContent(text=text)],
                                structured_content={"job_id": job.id, "status": "running", "last": last})
