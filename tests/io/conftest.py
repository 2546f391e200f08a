"""Fixtures of the IO tests: a real S3 server (SeaweedFS), settings, and loopback HTTP servers.

SeaweedFS (tests/io/seaweed.py) starts once per session on free loopback ports and is
killed at the end of the session; `own_seaweed` gives a test its own instance to kill.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from comfy_bridge.settings import BridgeSettings, S3Settings
from tests.io.seaweed import REGION, Seaweed, free_port, seaweed_or_skip
from tests.support import serve_app

__all__ = ["REGION", "Seaweed", "free_port", "s3_env"]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    weed = seaweed_or_skip(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Seaweed]:
    """A SeaweedFS of this test's own, to kill."""
    weed = seaweed_or_skip(tmp_path / "seaweed")
    yield weed
    weed.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., BridgeSettings]:
    """Settings with fast retries and everything on tmp_path; S3 defaults from `s3=` kwargs."""

    def make(s3: dict[str, Any] | None = None, **kwargs: Any) -> BridgeSettings:
        s3_fields: dict[str, Any] = {
            "access_key_id": None, "secret_access_key": None, "endpoint_url": None,
            "bucket_name": None, "region": None, "prefix": "", "retries": 2,
            "retry_backoff_s": 0.02, "presign_expiry_s": 600,
        }
        s3_fields.update(s3 or {})
        for key in ("access_key_id", "secret_access_key"):
            if isinstance(s3_fields[key], str):
                s3_fields[key] = SecretStr(s3_fields[key])
        base: dict[str, Any] = {
            "comfyui_path": tmp_path / "comfy",
            "spool_dir": tmp_path / "spool",
            "allow_private_urls": True,
            "webhook_retries": 3,
            "webhook_retry_backoff_s": 0.02,
            "webhook_timeout_s": 5.0,
            "webhook_secret": None,
            "s3": S3Settings(**s3_fields),
        }
        base.update(kwargs)
        return BridgeSettings(**base)

    return make


def s3_env(weed: Seaweed, bucket: str, **extra: Any) -> dict[str, Any]:
    """S3 settings pointing at the test SeaweedFS (what S3_* variables would say)."""
    return {
        "access_key_id": weed.access_key, "secret_access_key": weed.secret_key,
        "endpoint_url": weed.endpoint, "bucket_name": bucket, "region": REGION, **extra,
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start a loopback aiohttp server with {path: handler}; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler], method: str = "*") -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route(method, path, handler)
        port = await serve_app(app, runners, shutdown_timeout=1.0)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
