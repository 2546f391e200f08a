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
import os
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol


from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.comfyui import graph as graphs
from comfy_bridge.comfyui.client import ComfyClient, PromptResult
from comfy_bridge.comfyui.supervisor import classify_execution_error
from comfy_bridge.delivery import precheck, select
from comfy_bridge.delivery.base import Artifact, Destination, guess_mimetype
from comfy_bridge.errors import (
    BridgeError,
    DeadlineExceeded,
    DeliveryFailed,
    ExecutionFailed,
    OutOfMemory,
    UnknownTemplate,
)
from comfy_bridge.jobs.inflight import InflightRuns
from comfy_bridge.jobs.protocol import GenerateResponse, JobInput, Timings
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
        self.picker = picker or select.pick
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
        out_dir, uploaded = "", []
        try:
            t_inputs = time.monotonic()
            staged, uploaded = await self._stage(job)
            inputs_ms = (time.monotonic() - t_inputs) * 1000
            result, out_dir = await self._execute(job, graph, staged, deadline, timeout_s, events)
            t_out = time.monotonic()
            artifacts = await self._collect(result, out_dir)
            destination = self.picker(job, self.settings)
            try:
                outputs = await destination.deliver(job, artifacts)
            except OSError as exc:  # a full or read-only disk while converting or spooling
                raise _write_failed(exc, artifacts) from None
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
            self._cleanup(out_dir, uploaded)
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

    async def _stage(self, job: JobInput) -> tuple[dict[str, str], list[str]]:
        """(name -> staged path, paths to remove afterwards: the stager cleans its own)."""
        if not job.images:
            return {}, []
        if self.stager is None:
            from comfy_bridge.inputs import InputStager as DefaultStager

            self.stager = DefaultStager(self.settings, self.client)
        return dict(await _maybe_await(self.stager.stage(job))), []

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
                    self._cleanup(out_dir, [])
                    raise
                finally:
                    if watch is not None:
                        watch.close()
                if result.failure is None:
                    return result, out_dir
                self._cleanup(out_dir, [])
                err = self._failure(result)
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

    def _failure(self, result: PromptResult) -> BridgeError:
        failure = result.failure
        assert failure is not None
        data = failure.data
        node_id, node_type = data.get("node_id"), data.get("node_type")
        if failure.type == "execution_interrupted":
            return ExecutionFailed(
                f"ComfyUI interrupted the prompt at node {node_id} ({node_type}) before it finished",
                prompt_id=result.prompt_id, node_id=node_id, node_type=node_type, interrupted=True,
            )
        exc_type = str(data.get("exception_type") or "")
        message = str(data.get("exception_message") or "").strip()
        where = f"node {node_id} ({node_type})" if node_id is not None else "a node"
        details = dict(prompt_id=result.prompt_id, node_id=node_id, node_type=node_type,
                       exception_type=exc_type or None)
        kind = classify_execution_error(exc_type, message)
        if kind == "out_of_memory":
            return OutOfMemory(
                f"{where} ran out of GPU memory after {self.settings.oom_retries} retry(ies) with "
                f"models unloaded: {message} (lower the resolution or batch size)",
                **details,
            )
        if kind == "cuda_fatal":
            log.error("fatal CUDA error: %s", message)
            if self.on_fatal is not None:
                self._spawn(_maybe_await(self.on_fatal(message)))
            return ExecutionFailed(
                f"{where} hit a fatal GPU error ({message}); this worker is being replaced, "
                "retry the request", fatal=True, retriable=True, **details,
            )
        log.warning("execution error at %s: %s: %s", where, exc_type, message)
        return ExecutionFailed(f"{where} raised {exc_type or 'an error'}: {message}", **details)

    async def _collect(self, result: PromptResult, out_dir: str) -> list[Artifact]:
        """Every file ComfyUI reported, whatever the key; temp previews only if alone."""
        saved: list[Artifact] = []
        temp: list[Artifact] = []
        for node_id, out in result.outputs.items():
            if not isinstance(out, dict):
                continue
            for key, items in out.items():
                for item in items if isinstance(items, list) else []:
                    if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                        continue
                    kind = item.get("type", "output")
                    art = Artifact(
                        filename=item["filename"],
                        node_id=str(node_id),
                        output_type=str(key),
                        mimetype=guess_mimetype(item["filename"]),
                        subfolder=str(item.get("subfolder") or ""),
                        comfy_type=str(kind),
                    )
                    if kind == "output":
                        saved.append(art)
                    elif kind == "temp":
                        temp.append(art)
        for i, (node_id, frame) in enumerate(result.ws_images):
            ext = "jpg" if frame.mimetype == "image/jpeg" else "png"
            saved.append(Artifact(
                filename=f"{out_dir.replace('/', '_')}_ws_{node_id}_{i:05d}.{ext}",
                node_id=node_id, output_type="images", mimetype=frame.mimetype or "image/png",
                data=frame.payload, comfy_type="websocket",
            ))
        artifacts = saved or temp
        await asyncio.gather(*(self._locate(a) for a in artifacts if a.data is None))
        return artifacts

    async def _locate(self, art: Artifact) -> None:
        """Point at the file in ComfyUI's folder (fast) or fetch it through /view."""
        folder = self.settings.comfyui_folder(art.comfy_type) if art.comfy_type in ("output", "temp") else None
        if folder is not None:
            base = folder.resolve()
            path = (base / art.subfolder / art.filename).resolve()
            if path.is_relative_to(base) and path.is_file():
                art.path = path
                return
        art.data = await self.client.view(art.filename, art.subfolder, art.comfy_type)

    def _cleanup(self, out_dir: str, uploaded: list[str]) -> None:
        """Remove this submission's output folder and uploaded inputs, off the hot path.

        Unlinking a multi-MB file on ext4 costs up to milliseconds; nobody waits for it.
        """
        output, inputs = self.settings.comfyui_folder("output"), self.settings.comfyui_folder("input")
        targets = [output / out_dir] if out_dir and output is not None else []
        targets += [inputs / p for p in uploaded] if inputs is not None else []
        if targets:
            self._spawn(asyncio.to_thread(_remove, targets, inputs))

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


def _write_failed(exc: OSError, artifacts: list[Artifact]) -> DeliveryFailed:
    """A 502 naming the disk error; the files stay in ComfyUI's output folder."""
    reason = exc.strerror or type(exc).__name__
    listed = []
    for art in artifacts:
        try:
            size = art.size
        except OSError:
            size = 0
        listed.append({"filename": art.filename, "node_id": art.node_id, "output_type": art.output_type,
                       "mimetype": art.mimetype, "bytes": size, "upload_error": reason})
    log.error("could not write outputs for delivery: %s (errno %s)", reason, exc.errno)
    return DeliveryFailed(
        f"the outputs were made but could not be written for delivery ({reason}); they were kept "
        "in ComfyUI's output folder on the worker",
        errno=exc.errno, output=listed,
    )


def _remove(targets: list[Path], inputs: Path | None) -> None:
    for target in targets:
        try:
            if target.is_dir():
                for child in target.iterdir():
                    child.unlink(missing_ok=True)
                target.rmdir()
            else:
                target.unlink(missing_ok=True)
                if inputs is not None:
                    _prune_empty(target.parent, inputs)
        except OSError as exc:
            log.warning("could not remove %s: %s", target, exc)


def _prune_empty(folder: Path, inputs: Path) -> None:
    """Remove now-empty parents of an uploaded input, never cvw/ itself."""
    stop = {inputs / graphs.OUTPUT_ROOT, inputs}
    while folder not in stop and folder.is_relative_to(inputs):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = folder.parent


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value

