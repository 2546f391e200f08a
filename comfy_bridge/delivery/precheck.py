"""Destinations checked before the GPU is spent: a request's own S3 target and webhook URL.

Without this, a request naming a bucket that does not exist, keys that are wrong or a
webhook on a private address runs its whole prompt first and then fails delivery with a
retriable 502, so every retry spends another GPU run on a request bound to fail. Here
comfy_bridge/jobs/serving.py calls `check_destinations` just before it submits, and a
destination that is refused or cannot work is a 422 (DestinationRefused, not
retriable) naming the field and what to do.

- webhook.url: syntax, and the address policy of comfy_bridge/net/guard.py on every
  address the host resolves to (a name that does not exist is refused; a resolver that
  does not answer is let through: the sender's own guarded resolver checks again).
- s3: only when the request names its own endpoint, bucket, credentials or region and the
  outputs go to S3 (delivery/choice.py). The endpoint is resolved once, checked and
  pinned (net/endpoint.py); then one cheap authenticated call, ListObjectsV2 with
  MaxKeys=1, on the client delivery will use. Only answers that prove the destination
  cannot work are refused (no such bucket, keys the store does not accept, an endpoint
  name that does not exist). AccessDenied is let through, since keys allowed to write but
  not list are common, and so is a store that is down or slow (5xx, refused connection,
  timeout): that may pass, and delivery then keeps the outputs (502, inline and spooled).

Outcomes are cached per endpoint + bucket + key id (+ secret digest): successes for
SUCCESS_TTL_S; refusals, and checks that proved nothing, for FAILURE_TTL_S only, so a
bucket created a moment later works and a store that is down is not probed per request.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from cachetools import TTLCache
from yarl import URL

from comfy_bridge import logs
from comfy_bridge.delivery import choice
from comfy_bridge.errors import DestinationRefused
from comfy_bridge.net.guard import AddressRefused, address_allowed, check_url
from comfy_bridge.schemas.job import JobInput
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

SUCCESS_TTL_S = 300.0
FAILURE_TTL_S = 10.0
PROBE_TIMEOUT_S = 20.0
_OWN_S3_FIELDS = ("endpoint_url", "bucket_name", "access_key_id", "secret_access_key", "region")
_BAD_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
             "InvalidSecurity", "TokenRefreshRequired"}
_BAD_REGION = {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}

_UNSURE = ("", "")  # a check that proved nothing either way: let the request through
_passed: TTLCache[tuple[Any, ...], None] = TTLCache(maxsize=2048, ttl=SUCCESS_TTL_S)
# key -> (field, message) of the refusal, or _UNSURE.
_refused: TTLCache[tuple[Any, ...], tuple[str, str]] = TTLCache(maxsize=2048, ttl=FAILURE_TTL_S)


def forget() -> None:
    """Drop every cached outcome (tests; an operator who just fixed a bucket can wait 10 s)."""
    _passed.clear()
    _refused.clear()


async def check_destinations(job: JobInput, settings: BridgeSettings) -> None:
    """Raise DestinationRefused (422) if the job's webhook or own S3 target cannot work."""
    if job.webhook is not None:
        await _cached(("webhook", job.webhook.url, settings.allow_private_urls),
                      lambda: _check_webhook(job.webhook.url, settings.allow_private_urls), "webhook")
    if job.s3 is not None and any(getattr(job.s3, f) for f in _OWN_S3_FIELDS) and choice.uses_s3(job, settings):
        from comfy_bridge.s3 import target as s3  # boto3 loads only where S3 is used

        target = s3.resolve_target(job.s3, settings.s3)
        if target is not None:
            key = ("s3", settings.allow_private_urls, target.bucket, *target.client_key())
            await _cached(key, lambda: _check_s3(job, settings, target), "s3")


async def _cached(key: tuple[Any, ...], run: Any, destination: str) -> None:
    if key in _passed:
        return
    refusal = _refused.get(key)
    if refusal is None:
        refusal = await run()
        if refusal is None:
            _passed[key] = None
            return
        _refused[key] = refusal
    if refusal is _UNSURE:
        return
    field, message = refusal
    log.warning("destination refused before submitting: %s: %s", field, message)
    raise DestinationRefused(message, destination=destination, field=field)


async def _check_webhook(url_text: str, allow_private: bool) -> tuple[str, str] | None:
    field = "webhook.url"
    try:
        url = check_url(url_text, allow_private=allow_private)
    except AddressRefused as exc:
        return field, _private(f"webhook.url {exc}")
    except ValueError as exc:
        return field, f"webhook.url is not a URL the worker can call ({exc}); give an http(s):// URL"
    if allow_private:
        return None
    return await _resolve_public(url, field, "webhook.url")


async def _resolve_public(url: URL, field: str, what: str) -> tuple[str, str] | None:
    """Every address of url's host must be public; a host that does not exist is refused."""
    host = url.host or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, url.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return field, f"{what} host {host} does not exist (DNS: {exc.strerror}); check the URL"
        return None  # the resolver did not answer: not proof of anything
    except ValueError as exc:  # UnicodeError: a label too long for IDNA
        return field, f"{what} host is not a valid host name ({exc}); check the URL"
    if not all(address_allowed(str(info[4][0])) for info in infos):
        return field, _private(f"{what} host {host} resolves to a non-public address")
    return None


def _private(what: str) -> str:
    return (f"{what}: the worker does not call private, loopback or link-local addresses "
            "(COMFY_BRIDGE_ALLOW_PRIVATE_URLS on the worker allows them); use a public URL")


async def _check_s3(job: JobInput, settings: BridgeSettings, target: Any) -> tuple[str, str] | None:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from comfy_bridge.net import endpoint
    from comfy_bridge.s3 import target as s3

    where = _where(target)
    try:
        pinned = await s3.check_endpoint(target, allow_private=settings.allow_private_urls)
    except AddressRefused as exc:
        return "s3.endpoint_url", _private(f"s3.endpoint_url {exc}")
    except s3.WorkerCredentialsRefused as exc:
        return "s3.access_key_id", str(exc)
    except endpoint.UnresolvableEndpoint as exc:
        return "s3.endpoint_url", f"{exc}; check s3.endpoint_url"
    except ValueError as exc:
        return "s3.endpoint_url", f"s3.endpoint_url is not a usable URL ({exc}); give http(s)://host[:port]"
    clients = getattr(choice.pick(job, settings), "clients", None)  # the clients delivery will use
    if clients is None:
        return None
    secrets = target.secrets()
    try:
        client = await clients.get(pinned)
        await asyncio.wait_for(
            asyncio.to_thread(client.s3.list_objects_v2, Bucket=target.bucket, MaxKeys=1), PROBE_TIMEOUT_S
        )
    except NoCredentialsError:
        return "s3.access_key_id", (f"no S3 credentials for bucket {target.bucket!r} at {where}: give "
                                    "s3.access_key_id and s3.secret_access_key")
    except ClientError as exc:
        return _client_error(exc, target, where, secrets)
    except ValueError as exc:  # botocore: an endpoint URL or region it cannot use
        return "s3.endpoint_url", f"the S3 target at {where} is not usable: {s3.describe_error(exc, secrets)}"
    except (BotoCoreError, TimeoutError, OSError) as exc:  # down or slow: not proof it cannot work
        log.warning("S3 pre-check of %s inconclusive: %s", where, s3.describe_error(exc, secrets))
        return _UNSURE
    return None


def _client_error(exc: Any, target: Any, where: str, secrets: list[str]) -> tuple[str, str] | None:
    from comfy_bridge.s3 import target as s3

    code = str(exc.response.get("Error", {}).get("Code", ""))
    said = s3.describe_error(exc, secrets)
    bucket = target.bucket
    if code == "NoSuchBucket":
        return "s3.bucket_name", (f"bucket {bucket!r} does not exist at {where}: create it, or name an "
                                  "existing bucket in s3.bucket_name")
    if code == "InvalidBucketName":
        return "s3.bucket_name", f"{bucket!r} is not a valid bucket name ({said})"
    if code in _BAD_KEYS and target.credentials_from_request:
        return "s3.access_key_id", (f"{where} does not accept the request's credentials ({said}): check "
                                    "s3.access_key_id and s3.secret_access_key")
    if code in _BAD_REGION:
        return "s3.region", f"bucket {bucket!r} at {where} needs another region ({said}): set s3.region"
    if code == "AllAccessDisabled":
        return "s3.bucket_name", f"all access to bucket {bucket!r} is disabled ({said})"
    log.info("S3 pre-check of %s/%s answered %s: let through", where, bucket, code or "an error")
    return None if code == "AccessDenied" else _UNSURE


def _where(target: Any) -> str:
    if not target.endpoint_url:
        return "AWS S3"
    try:
        url = URL(target.endpoint_url)
        return f"{url.scheme}://{url.host}{'' if url.port in (None, 80, 443) else ':' + str(url.port)}"
    except ValueError:
        return "the endpoint"
