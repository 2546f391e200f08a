"""The four forms an input file can arrive in, turned into bytes within the limits.

- base64 (standard or URL-safe alphabet, padding optional), RunPod's only form;
- a data URI `data:image/png;base64,...`, what browsers and many SDKs produce;
- an http(s) URL, fetched with a timeout, a size cap and the address guard;
- `s3://bucket/key`, read with the request's own S3 credentials, or the environment's
  for the buckets on COMFY_BRIDGE_S3_INPUT_BUCKETS only (default: the output bucket), so
  a caller cannot read whatever else the worker's keys can.

Every failure is a `SourceError` whose message says what was wrong, never a credential.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from comfy_bridge.net.guard import AddressRefused, check_url, refused
from comfy_bridge.s3.clients import S3Clients
from comfy_bridge.s3.target import WorkerCredentialsRefused, check_endpoint, describe_error, resolve_target
from comfy_bridge.schemas.job import S3Destination as S3Request
from comfy_bridge.settings import BridgeSettings

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.S)
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_CHUNK = 256 * 1024


class SourceError(Exception):
    """An input that cannot be decoded or fetched; the message is safe to show the caller."""


def kind_of(value: str) -> str:
    head = value[:8].lower()
    if head.startswith("data:"):
        return "data_uri"
    if head.startswith(("http://", "https:/")):
        return "url"
    if head.startswith("s3://"):
        return "s3"
    return "base64"


def decode_base64(text: str, max_bytes: int) -> bytes:
    compact = "".join(text.split())
    if (len(compact) * 3) // 4 > max_bytes + 2:
        raise SourceError(f"is over the {max_bytes} byte limit (decoded)")
    if not compact:
        raise SourceError("is empty")
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            data = base64.urlsafe_b64decode(compact.encode("ascii"))
        else:
            data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SourceError(
            "is not valid base64 (nor a data: URI, an http(s):// URL or s3://bucket/key)"
        ) from None
    if len(data) > max_bytes:
        raise SourceError(f"is {len(data)} bytes, over the {max_bytes} byte limit")
    if not data:
        raise SourceError("is empty")
    return data


def decode_data_uri(text: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(text)
    if not match:
        raise SourceError("is a malformed data: URI (expected data:<mime>;base64,<data>)")
    if ";base64" not in (match.group("params") or "").lower():
        raise SourceError("is a data: URI without ;base64 (only base64 data URIs are accepted)")
    return decode_base64(match.group("data"), max_bytes)


async def fetch_url(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, allow_private: bool, timeout_s: float
) -> bytes:
    """GET with redirects followed by hand, so each hop passes the address check."""
    try:
        current = check_url(url, allow_private=allow_private)
        for _ in range(_MAX_REDIRECTS + 1):
            async with session.get(current, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise SourceError(f"got HTTP {resp.status} without a Location")
                    current = check_url(current.join(URL(location)), allow_private=allow_private)
                    continue
                if resp.status != 200:
                    raise SourceError(f"could not be fetched: HTTP {resp.status} from {current.host}")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise SourceError(
                        f"is {resp.content_length} bytes, over the {max_bytes} byte limit"
                    )
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    buf += chunk
                    if len(buf) > max_bytes:
                        raise SourceError(f"is over the {max_bytes} byte limit")
                if not buf:
                    raise SourceError(f"is empty (from {current.host})")
                return bytes(buf)
        raise SourceError(f"redirected more than {_MAX_REDIRECTS} times")
    except SourceError:
        raise
    except AddressRefused as exc:
        raise SourceError(f"refused: {exc} (private, loopback and link-local URLs are not fetched)") from None
    except ValueError as exc:
        raise SourceError(f"is not a fetchable URL: {exc}") from None
    except TimeoutError:
        raise SourceError(f"could not be fetched within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        why = refused(exc)
        if why is not None:
            raise SourceError(
                f"refused: {why} (private, loopback and link-local URLs are not fetched)"
            ) from None
        raise SourceError(f"could not be fetched: {type(exc).__name__}: {exc}") from None


async def fetch_s3(
    url: str,
    request: S3Request | None,
    settings: BridgeSettings,
    clients: S3Clients,
    *,
    max_bytes: int,
) -> bytes:
    """Read s3://bucket/key with the request's credentials, the environment's for allowed buckets."""
    rest = url[5:]
    bucket, _, key = rest.partition("/")
    if len(bucket) < 3 or not key:
        raise SourceError("is not a valid s3://bucket/key URL")
    target = resolve_target(request, settings.s3, bucket=bucket)
    assert target is not None
    if not target.credentials_from_request and bucket not in settings.worker_input_buckets():
        raise SourceError(
            f"refused: bucket {bucket!r} is not one the worker reads with its own credentials "
            "(COMFY_BRIDGE_S3_INPUT_BUCKETS); give s3.access_key_id and s3.secret_access_key "
            "that can read it, or send the image as an https:// URL"
        )
    secrets = target.secrets()
    try:
        target = await check_endpoint(target, allow_private=settings.allow_private_urls)
        client = await clients.get(target)
    except (AddressRefused, WorkerCredentialsRefused) as exc:
        raise SourceError(f"refused: {exc}") from None
    except Exception as exc:
        raise SourceError(f"could not be read: {describe_error(exc, secrets)}") from None

    def read() -> bytes:
        obj = client.s3.get_object(Bucket=bucket, Key=key)
        body = obj["Body"]
        try:
            length = obj.get("ContentLength")
            if length is not None and length > max_bytes:
                raise SourceError(f"is {length} bytes, over the {max_bytes} byte limit")
            data = body.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise SourceError(f"is over the {max_bytes} byte limit")
            return data
        finally:
            body.close()

    try:
        data = await asyncio.wait_for(asyncio.to_thread(read), settings.input_fetch_timeout_s)
    except SourceError:
        raise
    except TimeoutError:
        raise SourceError(f"could not be read within {settings.input_fetch_timeout_s:g} s") from None
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(f"could not be read: {describe_error(exc, secrets)}") from None
    if not data:
        raise SourceError("is empty")
    return data
