"""One request's S3 target and what is safe to say about its errors.

`S3Target` is where a request's objects go or come from: the request's `s3` fields over
the S3_* settings (`resolve_target`), its caller-chosen endpoint checked and pinned by
comfy_bridge/net/endpoint.py (`check_endpoint`). `describe_error` and `scrub` word boto3
errors without credentials; `is_permanent` tells the errors no retry can fix. Used by the
S3 destination (comfy_bridge/delivery/s3.py), the destination pre-check and `s3://` inputs
(comfy_bridge/inputs/sources.py).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import ClientError
from pydantic import SecretStr

from comfy_bridge import logs
from comfy_bridge.net import endpoint
from comfy_bridge.schemas.job import S3Destination as S3Request
from comfy_bridge.settings import S3Settings

# S3 error codes that no retry can fix: fail at once instead of backing off for seconds.
_PERMANENT_CODES = {
    "AccessDenied", "AllAccessDisabled", "AuthorizationHeaderMalformed", "InvalidAccessKeyId",
    "InvalidBucketName", "NoSuchBucket", "SignatureDoesNotMatch", "InvalidArgument",
    "InvalidRequest", "AccountProblem", "NotImplemented", "MethodNotAllowed", "403", "404",
}


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
    # The checked addresses a request's own endpoint is connected to (net/endpoint.py).
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
