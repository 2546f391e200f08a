"""A caller-chosen S3 endpoint: resolved once, checked, and connected to at those addresses.

A request may name its own `s3.endpoint_url`. Checking the name's addresses and then
letting botocore resolve it again would leave a gap a rebinding DNS can use (public
address for the check, 169.254.169.254 for the connection). So the name is resolved
here once, every address it gives must pass the guard of comfy_bridge/net/guard.py,
and the boto3 client is pinned to them: its connections go to those IPs (in the
resolver's order, the next one if one cannot be reached, as urllib3 does), while the Host header, SigV4 signature, TLS SNI and certificate check all still use the
name (urllib3 verifies the certificate against `host`, which pinning leaves alone).
A connection to any other host from a pinned client is refused rather than resolved.

Resolutions are kept a few minutes (bounded), so every request to an endpoint reuses
one address and one client, and an endpoint whose addresses change is re-resolved.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from cachetools import TTLCache
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from comfy_bridge.net.guard import AddressRefused, address_allowed, check_url

RESOLVED_TTL_S = 300.0
_resolved: TTLCache[tuple[str, int, bool], tuple[str, ...]] = TTLCache(maxsize=512, ttl=RESOLVED_TTL_S)


class UnresolvableEndpoint(OSError):
    """The endpoint's host name does not resolve."""


async def resolve_once(endpoint_url: str, *, allow_private: bool) -> tuple[str, ...]:
    """The addresses `endpoint_url` is connected to; AddressRefused if any is not public."""
    url = check_url(endpoint_url, allow_private=allow_private)
    host = url.host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    key = (host, port, allow_private)
    cached = _resolved.get(key)
    if cached is not None:
        return cached
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableEndpoint(f"endpoint host {host} does not resolve ({exc.strerror})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnresolvableEndpoint(f"endpoint host {host} has no address")
    if not allow_private and not all(address_allowed(a) for a in addresses):
        raise AddressRefused(f"endpoint {host} resolves to a non-public address")
    _resolved[key] = addresses
    return addresses


class _Pinned:
    """Connection mixin: connect to the pinned addresses of `host`, never resolve it."""

    pins: dict[str, tuple[str, ...]] = {}

    def _new_conn(self) -> socket.socket:
        name = self._dns_host  # type: ignore[attr-defined]
        addresses = self.pins.get(name.rstrip("."))
        if not addresses:
            raise NewConnectionError(self, f"{name} is not the checked endpoint of this client")  # type: ignore[arg-type]
        try:
            for i, address in enumerate(addresses):
                self._dns_host = address  # type: ignore[attr-defined]
                try:
                    return super()._new_conn()  # type: ignore[misc]
                except (NewConnectionError, ConnectTimeoutError):
                    if i + 1 == len(addresses):
                        raise
            raise AssertionError("unreachable")
        finally:
            self._dns_host = name  # host, SNI and certificate checks use the name again


def pin(client: Any, endpoint_url: str, addresses: tuple[str, ...]) -> None:
    """Make a just-built boto3 client connect to `addresses` for `endpoint_url`'s host.

    Uses botocore's URLLib3Session pool classes (botocore/httpsession.py), the one place
    its connections are made; a botocore without them fails here, not silently.
    """
    host = check_url(endpoint_url, allow_private=True).host or ""
    pins = {host: tuple(addresses)}
    http_conn = type("PinnedHTTPConnection", (_Pinned, AWSHTTPConnection), {"pins": pins})
    https_conn = type("PinnedHTTPSConnection", (_Pinned, AWSHTTPSConnection), {"pins": pins})
    classes = {
        "http": type("PinnedHTTPPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("PinnedHTTPSPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
    session = client._endpoint.http_session
    session._pool_classes_by_scheme = classes  # proxy managers made later use these too
    session._manager.pool_classes_by_scheme = classes
