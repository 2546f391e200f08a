"""JobRunner: the request contract of PRODUCT.md, end to end, for one JobInput.

expand template -> check the graph -> stage inputs -> submit with our prompt_id -> wait
under a deadline -> collect every file ComfyUI reports -> deliver -> respond. Each
failure is a BridgeError subclass whose status tells the caller what to do; the prompt
of a request that gives up (deadline, caller gone) is interrupted or dequeued so it
stops holding the GPU.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import uuid
from typing import Any, Awaitable, Callable, Protocol


from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.comfyui import graph as graphs
from comfy_bridge.comfyui.client import ComfyClient, PromptResult
from comfy_bridge.delivery import precheck, choice
from comfy_bridge.delivery.base import Destination
from comfy_bridge.errors import (
    BridgeError,
    DeadlineExceeded,
    DeliveryFailed,
    OutOfMemory,
    UnknownTemplate,
)
from comfy_bridge.jobs import outputs as outputs_
from comfy_bridge.jobs.inflight import InflightRuns
from comfy_bridge.jobs.prompt_failure import prompt_failure
from comfy_bridge.schemas.job import GenerateResponse, JobInput, Timings
from comfy_bridge.jobs.watchdog import Watchdog
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

# How long to wait for ComfyUI to confirm an interrupt before answering anyway.
_ABANDON_WAIT_S = 5.0


class _DeadlinePassed(Exception):
    """The request's own timeout ran out (kept apart from any TimeoutError inside a wait)."""


class InputStager(Protocol):
    """Places `job.images` in ComfyUI's input folder; returns name -> path LoadImage takes."""

    async def stage(self, job: JobInput) -> dict[str, str]: ...


class TemplateStore(Protocol):
    """Expands a named template (`modifier`) with its typed `modifications` into a graph."""

    def expand(self, name: str, modifications: dict[str, Any]) -> dict[str, Any]: ...


class PromptWatch(Protocol):
    def submitted(self) -> None: ...

    def close(self) -> None: ...


class EventSink(Protocol):
    """Hears of a request's submissions and deliveries (comfy_bridge/jobs/stream_events.py)."""

    def watch(self, prompt_id: str, graph: dict[str, Any]) -> PromptWatch: ...

    def delivered(self, outputs: list[Any]) -> None: ...


class WebhookSender(Protocol):
    """Sends a request's result to its webhook in the background (fire and forget)."""

    def schedule(self, job: JobInput, body: dict[str, Any]) -> None: ...


Picker = Callable[[JobInput, BridgeSettings], Destination]


def failure_body(request_id: str | None, err: BridgeError, prompt_id: str | None = None) -> dict[str, Any]:
    """The failure JSON of the contract: `{id, status: failed, error: {type, message, retriable, ...}}`.

    Outputs a failed delivery still made (`output` in the details) go at the top level.
    """
    error = err.to_dict()
    body: dict[str, Any] = {"id": request_id, "status": "failed", "error": error}
    prompt_id = prompt_id or err.details.get("prompt_id")
    if prompt_id:
        body["prompt_id"] = prompt_id
    if "output" in error:
        body["output"] = error.pop("output")
    return body


class JobRunner:
    def __init__(
        self,
        settings: BridgeSettings,
        client: ComfyClient,
        *,
        stager: InputStager | None = None,
        templates: TemplateStore | None = None,
        webhooks: WebhookSender | None = None,
        workload_fn: Callable[[dict[str, Any]], float] | None = None,
        on_fatal: Callable[[str], Any] | None = None,
        picker: Picker | None = None,
        availability: Callable[[], None] | None = None,
        on_stuck: Callable[[str], Any] | None = None,
        metrics: obs.Metrics | None = None,
        on_executed: Callable[[dict[str, Any], float], None] | None = None,
    ) -> None:
        self.settings = settings
        # Told (graph, ComfyUI's execution_ms) of each success: the worker learns its units from it.
        self.on_executed = on_executed
        self.client = client
        self.stager = stager
        self.templates = templates
        self.webhooks = webhooks
        self.workload_fn = workload_fn
        self.on_fatal = on_fatal
        self.picker = picker or choice.pick
        # Raises ComfyUnavailable while a supervisor restarts ComfyUI: 503 at once.
        self.availability = availability
        self.metrics = metrics or obs.METRICS
        self.active = 0  # requests inside run()
        # A resend of a request in flight joins it; another payload under its request_id: 409.
        self.inflight = InflightRuns()
        self._background: set[asyncio.Task[Any]] = set()
        # on_stuck(reason): the watchdog found ComfyUI not answering (a supervisor's restart).
        self.watchdog = Watchdog(client, settings.watchdog_silence_s, probes=settings.watchdog_probes,
                                 on_stuck=on_stuck, spawn=self._spawn)

    @property
    def prompts_inflight(self) -> int:
        return self.client.inflight

    def fail_inflight(self, exc: BridgeError) -> int:
        """Wake every waiting prompt with `exc`: the supervisor saw ComfyUI die."""
        return self.client.fail_inflight(exc)

    async def run(self, job: JobInput, events: EventSink | None = None) -> GenerateResponse:
        """Run `job`, or join the run of the same request in flight (comfy_bridge/jobs/inflight.py).

        `events` (POST /generate/stream) hears of each submission and delivery of the run
        this caller starts; a caller that joins a run in flight gets its result only."""
        self.active += 1
        try:
            with logs.bind(request_id=job.request_id):
                response, _joined = await self.inflight.run(
                    job, functools.partial(self._notified_run, job, events))
        finally:
            self.active -= 1
        return response

    async def _notified_run(self, job: JobInput, events: EventSink | None) -> GenerateResponse:
        """One run, and its webhook (once, however many callers joined it)."""
        try:
            response = await self._run(job, events)
        except BridgeError as err:
            self._notify(job, functools.partial(failure_body, job.request_id, err))
            raise
        self._notify(job, lambda: response.model_dump(mode="json"))
        return response

    # ---- the steps -----------------------------------------------------------------------

    async def _run(self, job: JobInput, events: EventSink | None = None) -> GenerateResponse:
        t0 = time.monotonic()
        timeout_s = min(job.timeout_s or self.settings.default_timeout_s, self.settings.max_timeout_s)
        deadline = t0 + timeout_s

        graph = graphs.validate_structure(await self._graph(job))
        missing = await self.client.missing_classes(graphs.class_types(graph))
        if missing:
            raise graphs.missing_classes_error(missing, graph)
        graphs.check_socket_inputs(graph, self.client.node_info)
        await precheck.check_destinations(job, self.settings)  # 422 before the GPU, not 502 after

        if self.availability is not None:
            self.availability()
        out_dir = ""
        try:
            t_inputs = time.monotonic()
            staged = await self._stage(job)
            inputs_ms = (time.monotonic() - t_inputs) * 1000
            result, out_dir = await self._execute(job, graph, staged, deadline, timeout_s, events)
            t_out = time.monotonic()
            artifacts = await outputs_.collect(result, out_dir, self.settings, self.client)
            destination = self.picker(job, self.settings)
            try:
                outputs = await destination.deliver(job, artifacts)
            except OSError as exc:  # a full or read-only disk while converting or spooling
                raise outputs_.write_failed(exc, artifacts) from None
            if events is not None:
                events.delivered(outputs)
            outputs_ms = (time.monotonic() - t_out) * 1000
        except DeliveryFailed as err:
            # Undelivered files were moved to the spool (fetchable, re-uploaded when S3 is
            # back); ComfyUI's folder is emptied as after any outcome. A disk error: they stay.
            if err.details.get("errno") is not None:
                out_dir = ""
            raise
        finally:
            self._cleanup(out_dir)
            if job.images and self.stager is not None and hasattr(self.stager, "cleanup"):
                self._spawn(self.stager.cleanup(job))

        if self.on_executed is not None and not result.failure:
            try:
                self.on_executed(graph, result.execution_ms)
            except Exception:
                log.exception("on_executed hook failed")
        return GenerateResponse(
            id=job.request_id,
            prompt_id=result.prompt_id,
            output=outputs,
            timings=Timings(
                queued_ms=round(result.queued_ms, 3),
                inputs_ms=round(inputs_ms, 3),
                execution_ms=round(result.execution_ms, 3),
                outputs_ms=round(outputs_ms, 3),
                total_ms=round((time.monotonic() - t0) * 1000, 3),
            ),
            workload=self.workload_fn(graph) if self.workload_fn else None,
        )

    async def _graph(self, job: JobInput) -> dict[str, Any]:
        if job.workflow_json is not None:
            return job.workflow_json
        if self.templates is None:
            raise UnknownTemplate(
                f"modifier {job.modifier!r} names a template, but this bridge has no templates "
                "configured; send the graph as workflow_json instead"
            )
        return await _maybe_await(self.templates.expand(job.modifier or "", job.modifications))

    async def _stage(self, job: JobInput) -> dict[str, str]:
        """name -> staged path (the stager removes its own files afterwards)."""
        if not job.images:
            return {}
        if self.stager is None:
            from comfy_bridge.inputs import InputStager as DefaultStager

            self.stager = DefaultStager(self.settings, self.client)
        return dict(await _maybe_await(self.stager.stage(job)))

    async def _execute(
        self,
        job: JobInput,
        graph: dict[str, Any],
        staged: dict[str, str],
        deadline: float,
        timeout_s: float,
        events: EventSink | None = None,
    ) -> tuple[PromptResult, str]:
        """Submit and wait, retrying once per `oom_retries` after POST /free."""
        capture = frozenset(nid for nid, n in graph.items() if n["class_type"] == "SaveImageWebsocket")
        attempts = self.settings.oom_retries + 1
        for attempt in range(attempts):
            prompt_id = str(uuid.uuid4())
            out_dir = graphs.output_dir(job.request_id, prompt_id)
            prepared = graphs.prepare(graph, out_dir, staged)
            watch = events.watch(prompt_id, prepared) if events is not None else None
            with logs.bind(prompt_id=prompt_id):
                try:
                    await self.client.submit(
                        prepared, prompt_id, {"request_id": job.request_id}, capture_nodes=capture
                    )
                    if watch is not None:
                        watch.submitted()
                    result = await self._wait(prompt_id, deadline, timeout_s)
                except BaseException:
                    self._cleanup(out_dir)
                    raise
                finally:
                    if watch is not None:
                        watch.close()
                if result.failure is None:
                    return result, out_dir
                self._cleanup(out_dir)
                err = prompt_failure(result, self.settings.oom_retries)
                if err.details.get("fatal") and self.on_fatal is not None:
                    message = str(result.failure.data.get("exception_message") or "").strip()
                    self._spawn(_maybe_await(self.on_fatal(message)))
                if isinstance(err, OutOfMemory) and attempt + 1 < attempts:
                    log.warning("out of memory; freeing models and retrying (%d/%d)", attempt + 1, attempts - 1)
                    self.metrics.oom_retried()
                    await self.client.free(unload_models=True, free_memory=True)
                    continue
                raise err
        raise AssertionError("unreachable")

    async def _wait(self, prompt_id: str, deadline: float, timeout_s: float) -> PromptResult:
        """The prompt's result, under the request's deadline and the silence watchdog
        (jobs/watchdog.py: a slow silent node runs on; a ComfyUI that stops answering fails it)."""
        waiter = asyncio.ensure_future(self.client.wait(prompt_id))
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _DeadlinePassed
                await asyncio.wait({waiter}, timeout=min(remaining, self.watchdog.silence_left(prompt_id)))
                if waiter.done():
                    return waiter.result()
                stuck = await self.watchdog.check(prompt_id)
                if stuck is not None:
                    raise stuck
        except _DeadlinePassed:
            how = await asyncio.shield(self._abandon(prompt_id))
            raise DeadlineExceeded(
                f"the request ran past its {timeout_s:g}s timeout; the prompt was {how} "
                "(raise timeout_s, or make the workflow lighter)",
                prompt_id=prompt_id,
                timeout_s=timeout_s,
            ) from None
        except asyncio.CancelledError:
            # The caller went away: stop the prompt so it does not hold the GPU.
            await asyncio.shield(self._abandon(prompt_id))
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # retrieved: an outcome we acted on already

    async def _abandon(self, prompt_id: str) -> str:
        """Dequeue or interrupt a prompt nobody will wait for; say which."""
        how = "already finished"
        try:
            if await self.client.queue_position(prompt_id) == "pending":
                await self.client.delete_pending([prompt_id])
                how = "removed from the queue"
            if await self.client.queue_position(prompt_id) == "running":
                await self.client.interrupt(prompt_id)
                how = "interrupted"
                tracker = self.client.tracker(prompt_id)
                if tracker is not None:  # until ComfyUI confirms, so the GPU is free when we answer
                    await asyncio.wait({tracker.future}, timeout=_ABANDON_WAIT_S)
        except BridgeError as exc:
            log.warning("could not stop prompt %s: %s", prompt_id, exc.message)
            how = "left running (ComfyUI did not answer)"
        finally:
            self.client.forget(prompt_id)
        log.info("abandoned prompt: %s", how, extra={"fields": {"prompt_id": prompt_id}})
        return how

    def _cleanup(self, out_dir: str) -> None:
        """Remove this submission's output folder, off the hot path.

        Unlinking a multi-MB file on ext4 costs up to milliseconds; nobody waits for it.
        """
        output = self.settings.comfyui_folder("output")
        if out_dir and output is not None:
            self._spawn(asyncio.to_thread(outputs_.remove, [output / out_dir]))

    async def drain(self) -> None:
        """Wait for background work (kept requests, their S3 uploads and webhooks, cleanups).

        Cancelling this wait (a shutdown's grace running out) leaves that work running."""
        while self._background:
            await asyncio.wait(set(self._background))

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Track a request whose caller left but whose result is still wanted, so drain()
        (and a SIGTERM's drain, comfy_bridge/shutdown.py) waits for it."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Finish background work and close the collaborators that hold sessions."""
        await self.drain()
        for part in (self.stager, self.webhooks):
            closer = getattr(part, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing %s failed", type(part).__name__)

    # ---- background work ----------------------------------------------------------------------

    def _notify(self, job: JobInput, body: Callable[[], dict[str, Any]]) -> None:
        if job.webhook is None or self.webhooks is None:
            return
        try:
            result = self.webhooks.schedule(job, body())
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:
            log.exception("could not schedule the webhook")

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._background.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %r", task.exception())


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value

