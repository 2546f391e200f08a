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
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Callable

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import SecretStr
from s3transfer.subscribers import BaseSubscriber

from comfy_bridge import logs
from comfy_bridge import observability as obs
from comfy_bridge.delivery import endpoint
from comfy_bridge.delivery import redeliver
from comfy_bridge.delivery.base import Artifact, guess_mimetype
from comfy_bridge.delivery.convert import convert_artifacts
from comfy_bridge.delivery.spool import Spool
from comfy_bridge.errors import DeliveryFailed
from comfy_bridge.retry import RetryPolicy
from comfy_bridge.jobs.protocol import JobInput, OutputFile
from comfy_bridge.jobs.protocol import S3Destination as S3Request
from comfy_bridge.settings import BridgeSettings, S3Settings

log = logs.get(__name__)
# The longest wait between two tries of one upload.
_MAX_BACKOFF_S = 30.0

# S3 error codes that no retry can fix: fail at once instead of backing off for seconds.
_PERMANENT_CODES = {
    "AccessDenied", "AllAccessDisabled", "AuthorizationHeaderMalformed", "InvalidAccessKeyId",
    "InvalidBucketName", "NoSuchBucket", "SignatureDoesNotMatch", "InvalidArgument",
    "InvalidRequest", "AccountProblem", "NotImplemented", "MethodNotAllowed", "403", "404",
}

ProgressHook = Callable[[str, int], None]


@dataclass(frozen=True)
class S3Target:
    """One request's destination: the request's `s3` fields over the environment's."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str | None
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    endpoint_from_request: bool = False
    credentials_from_request: bool = False
    # The checked addresses a request's own endpoint is connected to (delivery/endpoint.py).
    pinned_addresses: tuple[str, ...] = ()

    def key_for(self, run_key: str, filename: str) -> str:
        """`prefix/request_id/run_id/filename`, from `JobInput.run_key`."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/{run_key}/{filename}" if prefix else f"{run_key}/{filename}"

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.access_key_id, self.secret_access_key) if s]

    def client_key(self) -> tuple[Any, ...]:
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else ""
        return (
            self.endpoint_url,
            self.region,
            self.access_key_id.get_secret_value() if self.access_key_id else None,
            hashlib.sha256(secret.encode()).hexdigest(),
            self.pinned_addresses,
        )


def resolve_target(
    request: S3Request | None, defaults: S3Settings, *, bucket: str | None = None
) -> S3Target | None:
    """Merge a request's `s3` over the S3_* settings; None when no bucket is named anywhere.

    `bucket` overrides both (an `s3://bucket/key` input names its own bucket). Credentials
    go as a pair: a request that gives either key gets none of the environment's.
    """

    def given(name: str) -> Any:
        value = getattr(request, name, None) if request is not None else None
        return value if value not in (None, "") else None

    def pick(name: str) -> Any:
        value = given(name)
        return value if value is not None else getattr(defaults, name)

    bucket = bucket or pick("bucket_name")
    if not bucket:
        return None
    own_keys = given("access_key_id") is not None or given("secret_access_key") is not None
    keys = given if own_keys else functools.partial(getattr, defaults)
    return S3Target(
        bucket=bucket,
        prefix=pick("prefix") or "",
        endpoint_url=pick("endpoint_url"),
        region=pick("region"),
        access_key_id=keys("access_key_id"),
        secret_access_key=keys("secret_access_key"),
        endpoint_from_request=bool(request is not None and request.endpoint_url),
        credentials_from_request=own_keys,
    )


class WorkerCredentialsRefused(ValueError):
    """The worker's own credentials would go to an endpoint or bucket the caller chose."""


async def check_endpoint(target: S3Target, *, allow_private: bool) -> S3Target:
    """`target` pinned to the checked addresses of a caller-chosen endpoint (the operator's
    own is trusted as is). AddressRefused for a non-public address; WorkerCredentialsRefused
    when the worker's credentials would be sent to the caller's endpoint."""
    if not target.endpoint_from_request or not target.endpoint_url:
        return target
    if not target.credentials_from_request:
        raise WorkerCredentialsRefused(
            "s3.endpoint_url is the request's own, so the worker's credentials are not sent "
            "there: give s3.access_key_id and s3.secret_access_key with it"
        )
    addresses = await endpoint.resolve_once(target.endpoint_url, allow_private=allow_private)
    return replace(target, pinned_addresses=addresses)


def scrub(text: str, secrets: list[str]) -> str:
    """Remove credentials from a message that may reach a response or a log line."""
    for secret in secrets:
        if len(secret) >= 4:  # shorter ones would mangle every message and protect nothing
            text = text.replace(secret, "***")
    return logs.redact(text)


def describe_error(exc: BaseException, secrets: list[str]) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        text = f"{code}: {err.get('Message') or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return scrub(text, secrets)


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in _PERMANENT_CODES
    return isinstance(exc, (ValueError, FileNotFoundError, PermissionError))


class _Client:
    """A boto3 client and the transfer manager that shares its connection pool."""

    def __init__(self, target: S3Target, settings: S3Settings) -> None:
        session = boto3.session.Session()
        self.s3 = session.client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=target.region,
            aws_access_key_id=target.access_key_id.get_secret_value() if target.access_key_id else None,
            aws_secret_access_key=(
                target.secret_access_key.get_secret_value() if target.secret_access_key else None
            ),
            config=Config(
                signature_version="s3v4",
                # Path-style works on every S3-compatible store; AWS itself picks its own.
                s3={"addressing_style": "path" if target.endpoint_url else "auto"},
                # Our own loop retries with backoff; botocore retries once for blips.
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=settings.max_concurrency + 4,
                tcp_keepalive=True,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        if target.pinned_addresses and target.endpoint_url:
            endpoint.pin(self.s3, target.endpoint_url, target.pinned_addresses)
        threshold = settings.multipart_threshold_bytes
        self.transfer = create_transfer_manager(
            self.s3,
            TransferConfig(
                multipart_threshold=threshold,
                multipart_chunksize=max(threshold, 5 * 1024 * 1024),
                max_concurrency=settings.max_concurrency,
                use_threads=True,
                preferred_transfer_client="classic",
            ),
        )

    def close(self) -> None:
        self.transfer.shutdown(cancel=True)
        self.s3.close()


class S3Clients:
    """A few clients kept alive (creating one costs tens of ms), keyed by endpoint+credentials."""

    def __init__(self, settings: S3Settings, size: int = 8) -> None:
        self._settings = settings
        self._size = size
        self._clients: OrderedDict[tuple[Any, ...], _Client] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, target: S3Target) -> _Client:
        key = target.client_key()
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = await asyncio.to_thread(_Client, target, self._settings)
                self._clients[key] = client
                while len(self._clients) > self._size:
                    _, old = self._clients.popitem(last=False)
                    await asyncio.to_thread(old.close)
            self._clients.move_to_end(key)
            return client

    async def aclose(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await asyncio.to_thread(client.close)

    def close(self) -> None:
        """Synchronous shutdown, for finalizers; prefer aclose in a running loop."""
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            client.close()


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
        self, job: JobInput, target: S3Target, client: _Client, artifact: Artifact
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
        self, client: _Client, target: S3Target, artifact: Artifact, key: str, mimetype: str
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
