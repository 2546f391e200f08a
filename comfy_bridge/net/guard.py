"""Outbound HTTP that a caller chooses the address of, without reaching the worker's own network.

Input URLs and webhook URLs come from the request: unchecked, a caller could make the
worker fetch `http://127.0.0.1:18188/...` (ComfyUI itself), the cloud metadata service
at 169.254.169.254, or hosts on the provider's private network. Every address a URL
resolves to must be global unless `allow_private_urls` is set: the check sits in the
DNS resolver the connection really uses (so DNS rebinding does not slip past it), plus
a check of IP literals, which aiohttp never resolves, on every URL including redirects.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL


class AddressRefused(OSError):
    """The URL points at a private, loopback, link-local or otherwise non-public address."""


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str | URL, *, allow_private: bool) -> URL:
    """Parse and vet a caller-given URL before any connection is made."""
    parsed = url if isinstance(url, URL) else URL(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"only http and https URLs are fetched, not {parsed.scheme or 'this'}")
    if not parsed.host:
        raise ValueError("the URL has no host")
    if allow_private:
        return parsed
    try:
        literal = ipaddress.ip_address(parsed.host.strip("[]").split("%", 1)[0])
    except ValueError:
        return parsed  # a name: the guarded resolver checks what it resolves to
    if not address_allowed(str(literal)):
        raise AddressRefused(f"{parsed.host} is not a public address")
    return parsed


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses names resolving to non-public addresses."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                if not address_allowed(result["host"]):
                    raise AddressRefused(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(*, allow_private: bool, timeout_s: float, **kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession whose connections can only reach allowed addresses. Call in a loop."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private), limit=64)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trust_env=False,
        **kwargs,
    )


def refused(exc: BaseException) -> AddressRefused | None:
    """The AddressRefused behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        inner = getattr(current, "os_error", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return None
