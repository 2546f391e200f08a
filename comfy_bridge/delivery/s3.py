"""S3 destination: outputs go to the caller's bucket, and presigned GET URLs come back.

Any S3-compatible store works (AWS, R2, B2, MinIO, SeaweedFS...). Where it goes:
the request's `s3` object, each field falling back to the environment:

    S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_ENDPOINT_URL, S3_BUCKET_NAME, S3_REGION,
    S3_PREFIX, S3_PRESIGN_EXPIRY_S (3600), S3_RETRIES (4), S3_RETRY_BACKOFF_S (0.5),
    S3_MULTIPART_THRESHOLD_BYTES (8 MiB), S3_MAX_CONCURRENCY (16)

Keys are `prefix/request_id/run_id/filename`: each run of a request_id has its own keys,
so a resend's upload never overwrites the object an earlier answer's URL points to.
Uploads run on boto3's transfer manager (its own threads, multipart past the threshold),
so the event loop keeps serving other requests and the next prompt runs while this
one's files upload. Each file is retried by the project's policy (comfy_bridge/retry.py:
exponential backoff with full jitter from S3_RETRY_BACKOFF_S, capped at 30 s); errors that no retry can fix (bad credentials, no such bucket) fail
at once. When a file finally fails, nothing made is lost: it is moved into the spool and
returned inline when small enough, and the request fails with 502 listing every output
with its `upload_error` and `spool_key`; the spooled files are then re-uploaded in the
background once S3 answers (delivery/redeliver.py). Credentials never appear in logs or
error messages.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
from typing import Any
from collections.abc import Callable

from s3transfer.subscribers import BaseSubscriber

from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.delivery import redeliver
from comfy_bridge.delivery.base import Artifact, guess_mimetype
from comfy_bridge.delivery.convert import convert_artifacts
from comfy_bridge.delivery.spool import Spool
from comfy_bridge.errors import DeliveryFailed
from comfy_bridge.retry import RetryPolicy
from comfy_bridge.s3.clients import S3Client, S3Clients
from comfy_bridge.s3.target import S3Target, check_endpoint, describe_error, is_permanent, resolve_target
from comfy_bridge.schemas.job import JobInput, OutputFile
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)
# The longest wait between two tries of one upload.
_MAX_BACKOFF_S = 30.0

ProgressHook = Callable[[str, int], None]


class _Settle(BaseSubscriber):
    """Hands a transfer's outcome (and its presigned URL) back to the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[str],
        presign: Callable[[], str],
        progress: Callable[[int], None] | None,
    ) -> None:
        self._loop = loop
        self._waiter = waiter
        self._presign = presign
        self._progress = progress

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        try:
            future.result()
            outcome: tuple[str | None, BaseException | None] = (self._presign(), None)
        except BaseException as exc:  # noqa: BLE001 - carried to the loop as is
            outcome = (None, exc)
        self._loop.call_soon_threadsafe(_settle, self._waiter, outcome)


def _settle(waiter: asyncio.Future[str], outcome: tuple[str | None, BaseException | None]) -> None:
    if waiter.done():
        return
    url, exc = outcome
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(url or "")


class S3Destination:
    """Destination protocol implementation for S3 and S3-compatible stores."""

    name = "s3"

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        spool: Spool | None = None,
        clients: S3Clients | None = None,
        remove_delivered: bool = True,
        progress: ProgressHook | None = None,
    ) -> None:
        self.settings = settings
        if spool is None:
            self.redeliveries = redeliver.shared(settings)
        else:
            self.redeliveries = redeliver.Redeliveries(
                spool, first_backoff_s=settings.s3.retry_backoff_s,
                max_backoff_s=settings.redeliver_max_backoff_s, for_s=settings.redeliver_for_s)
        self.spool = self.redeliveries.spool
        self.clients = clients or S3Clients(settings.s3)
        # ComfyUI's output folder is not storage: delivered files are removed (item 6).
        self.remove_delivered = remove_delivered
        # Called from transfer threads with (s3 key, bytes just sent); for metrics and tests.
        self.progress = progress

    def target(self, job: JobInput) -> S3Target | None:
        return resolve_target(job.s3, self.settings.s3)

    async def deliver(self, job: JobInput, artifacts: list[Artifact]) -> list[OutputFile]:
        target = self.target(job)
        converted = await convert_artifacts(artifacts, job.output)
        if target is None:  # pick() never routes here without a bucket; keep the files anyway
            nowhere = S3Target("(none)", "", None, None, None, None)
            error = "no S3 bucket: set input.s3.bucket_name or S3_BUCKET_NAME"
            return await self._finish(job, nowhere, artifacts, converted, [ValueError()] * len(converted), error)
        secrets = target.secrets()
        try:
            target = await check_endpoint(target, allow_private=self.settings.allow_private_urls)
            client = await self.clients.get(target)
        except Exception as exc:  # refused or bad endpoint URL, unknown region...
            error = describe_error(exc, secrets)
            results: list[OutputFile | BaseException] = [exc] * len(converted)
            return await self._finish(job, target, artifacts, converted, results, error)
        results = list(
            await asyncio.gather(
                *(self._deliver_one(job, target, client, a) for a in converted),
                return_exceptions=True,
            )
        )
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return await self._finish(job, target, artifacts, converted, results, None)

    async def _finish(
        self,
        job: JobInput,
        target: S3Target,
        originals: list[Artifact],
        converted: list[Artifact],
        results: list[OutputFile | BaseException],
        shared_error: str | None,
    ) -> list[OutputFile]:
        secrets = target.secrets()
        outputs: list[OutputFile] = []
        failures = 0
        pending: list[redeliver.Pending] = []
        for original, artifact, result in zip(originals, converted, results):
            if isinstance(result, OutputFile):
                outputs.append(result)
                if self.remove_delivered:
                    await asyncio.to_thread(_remove, original)
                continue
            failures += 1
            error = shared_error or describe_error(result, secrets)
            out = await self._preserve(job, original, artifact, error)
            outputs.append(out)
            kept = self.spool.resolve(out.spool_key) if out.spool_key else None
            if kept is not None and shared_error is None and not is_permanent(result):
                pending.append(redeliver.Pending(kept, target.key_for(job.run_key, artifact.filename), out))
        if pending:
            self.redeliveries.add(job, pending, functools.partial(self._reupload, target), is_permanent)
        if failures:
            where = f"s3://{target.bucket}/{target.key_for(job.run_key, '')}"
            log.error(
                "delivery failed: %d of %d outputs not uploaded to %s",
                failures, len(outputs), where,
            )
            raise DeliveryFailed(
                f"{failures} of {len(outputs)} outputs could not be uploaded to {where}: "
                f"{next(o.upload_error for o in outputs if o.upload_error)}",
                output=[o.model_dump(exclude_none=True) for o in outputs],
            )
        return outputs

    async def _deliver_one(
        self, job: JobInput, target: S3Target, client: S3Client, artifact: Artifact
    ) -> OutputFile:
        key = target.key_for(job.run_key, artifact.filename)
        mimetype = _mimetype(artifact)
        policy = RetryPolicy(
            first_s=self.settings.s3.retry_backoff_s, cap_s=_MAX_BACKOFF_S, attempts=self.settings.s3.retries + 1,
            retry_on=lambda exc: not is_permanent(exc), what=f"upload of {key}",
            describe=lambda exc: describe_error(exc, target.secrets()),
            on_retry=lambda exc: obs.s3_upload_retried(),  # comfy_bridge_s3_upload_retries_total
            log=log,
        )
        async for attempt in policy.retrying():
            with attempt:
                url = await self._upload(client, target, artifact, key, mimetype)
        return OutputFile(
            filename=artifact.filename,
            node_id=artifact.node_id,
            output_type=artifact.output_type,
            mimetype=mimetype,
            bytes=artifact.size,
            url=url,
            s3_key=key,
        )

    async def _reupload(self, target: S3Target, path: Any, key: str, mimetype: str) -> str:
        """One try at uploading a spooled file (delivery/redeliver.py retries it)."""
        client = await self.clients.get(target)
        art = Artifact(filename=path.name, node_id="", output_type="", mimetype=mimetype, path=path)
        return await self._upload(client, target, art, key, mimetype)

    async def _upload(
        self, client: S3Client, target: S3Target, artifact: Artifact, key: str, mimetype: str
    ) -> str:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        expiry = self.settings.s3.presign_expiry_s

        def presign() -> str:
            return client.s3.generate_presigned_url(
                "get_object", Params={"Bucket": target.bucket, "Key": key}, ExpiresIn=expiry
            )

        hook = self.progress
        progress = (lambda n: hook(key, n)) if hook is not None else None
        source: Any = io.BytesIO(artifact.data) if artifact.data is not None else str(artifact.path)
        transfer = client.transfer.upload(
            source,
            target.bucket,
            key,
            extra_args={"ContentType": mimetype},
            subscribers=[_Settle(loop, waiter, presign, progress)],
        )
        try:
            return await waiter
        except asyncio.CancelledError:
            transfer.cancel()
            raise

    async def _preserve(
        self, job: JobInput, original: Artifact, artifact: Artifact, error: str
    ) -> OutputFile:
        """Keep a file that could not be uploaded: spool it, and inline it when small."""
        size = artifact.size
        data: str | None = None
        if size <= self.settings.max_inline_bytes:
            data = await asyncio.to_thread(lambda: base64.b64encode(artifact.read_bytes()).decode())
        kept = None
        try:
            kept = await self.spool.keep(job.run_key, artifact)
        except OSError as exc:
            log.error("could not spool %s: %s", artifact.filename, exc)
        if kept is not None and artifact is not original and self.remove_delivered:
            await asyncio.to_thread(_remove, original)
        note = "; kept on the worker's spool" if kept is not None else ""
        return OutputFile(
            filename=artifact.filename,
            node_id=artifact.node_id,
            output_type=artifact.output_type,
            mimetype=_mimetype(artifact),
            bytes=size,
            data=data,
            upload_error=error + note,
            spool_key=self.spool.key_of(kept) if kept is not None else None,
        )

    async def aclose(self) -> None:
        await self.redeliveries.aclose()  # before the clients its uploads use
        await self.clients.aclose()

    def close(self) -> None:
        self.clients.close()


def _mimetype(artifact: Artifact) -> str:
    if artifact.mimetype and artifact.mimetype != "application/octet-stream":
        return artifact.mimetype
    return guess_mimetype(artifact.filename)


def _remove(artifact: Artifact) -> None:
    if artifact.path is not None:
        artifact.path.unlink(missing_ok=True)
