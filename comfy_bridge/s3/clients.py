"""boto3 clients for S3 targets, kept alive and shared.

`S3Client` is one boto3 client and the transfer manager on its connection pool, pinned to
the checked addresses of a caller-chosen endpoint (comfy_bridge/net/endpoint.py);
`S3Clients` keeps a few, keyed by endpoint and credentials, for the S3 destination
(comfy_bridge/delivery/s3.py) and `s3://` inputs (comfy_bridge/inputs/sources.py).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config

from comfy_bridge.net import endpoint
from comfy_bridge.s3.target import S3Target
from comfy_bridge.settings import S3Settings

class S3Client:
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
        self._clients: OrderedDict[tuple[Any, ...], S3Client] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, target: S3Target) -> S3Client:
        key = target.client_key()
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = await asyncio.to_thread(S3Client, target, self._settings)
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
