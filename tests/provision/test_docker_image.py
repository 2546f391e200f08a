"""The image, really built and run: `docker run` with and without Vast's environment.

Built from the local base image made by .ci/services.sh (debootstrap; no registry can be
reached here) with SKIP_EXTERNAL=1 (no GitHub clone, no CUDA wheels), so the container
has no ComfyUI of its own: it is pointed at the ComfyUI double running on the host
(host networking). A signed request goes from outside the container, through a router
(the emulator: inside the container in local mode, on the host in Vast mode), to the
worker, and back with an image. When no Docker engine answers: skipped with the reason on
a laptop, failed with it under CI=true (tests/support.py service_missing).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.provision.conftest import REPO_ROOT
from tests.support import service_missing

BASE_IMAGE = os.environ.get("COMFY_WORKER_BASE_IMAGE", "comfy-worker-base:bookworm")
IMAGE = os.environ.get("COMFY_WORKER_TEST_IMAGE", "comfy-worker:test")
REASON_FILE = Path(os.environ.get("COMFY_WORKER_CI_STATE", "/tmp/comfy-worker-ci")) / "docker-unavailable"
BENCH = "/opt/comfy-worker/workflows/benchmark_weightless.json"
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "docker"}}}

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def _unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client (run .ci/services.sh)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        why = REASON_FILE.read_text().strip() if REASON_FILE.exists() else info.stderr.strip().splitlines()[-1:]
        return f"no Docker engine: {why}"
    inspect = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=20)
    if inspect.returncode != 0:
        return f"base image {BASE_IMAGE} missing: .ci/services.sh builds it with debootstrap"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_docker() -> None:
    """Skip (laptop) or fail (CI=true) with the reason when the image cannot be built here."""
    reason = _unavailable()
    if reason:
        service_missing(reason)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    require_docker()
    args = ["docker", "build", "--network", "host", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--build-arg", "SKIP_EXTERNAL=1"]
    # pip inside the build reaches the index the way this machine does (a TLS proxy
    # trusted through the CA bundle the base image carries); file:// indexes stay behind.
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():
        args += ["--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = " ".join(u for u in os.environ.get(var, "").split() if u.startswith("http"))
        if urls:
            args += ["--build-arg", f"{var}={urls}"]
    began = time.monotonic()
    done = subprocess.run([*args, str(REPO_ROOT)], capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, f"docker build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"\n[docker] image built in {time.monotonic() - began:.1f}s", file=sys.stderr)
    yield IMAGE


@pytest.fixture
async def host_double(tmp_path) -> AsyncIterator[str]:
    """The ComfyUI double as its own process on the host (the container reaches it over host networking)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.comfy_double", "--port", "0", "--root", str(tmp_path / "double"),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    url = None
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while url is None:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("the double exited before it listened")
            m = re.search(r"To see the GUI go to: (http://\S+)", line)
            url = m.group(1) if m else None
    try:
        yield url
    finally:
        proc.terminate()
        await proc.wait()


class Container:
    def __init__(self, image: str, env: dict[str, str]) -> None:
        self.name = f"comfy-worker-test-{uuid.uuid4().hex[:8]}"
        self.args = ["docker", "run", "-d", "--name", self.name, "--network", "host"]
        for k, v in env.items():
            self.args += ["-e", f"{k}={v}"]
        self.args.append(image)

    def start(self) -> None:
        done = subprocess.run(self.args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        done = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.name], capture_output=True,
                              text=True, timeout=30)
        return done.stdout.strip() == "true"

    def stop(self) -> int:
        subprocess.run(["docker", "stop", "-t", "20", self.name], capture_output=True, timeout=60)
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", self.name], capture_output=True,
                              text=True, timeout=30)
        return int(done.stdout.strip() or -1)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


async def _wait_ready_worker(session: aiohttp.ClientSession, router: str, container: Container,
                             timeout_s: float = 180) -> dict:
    """Poll the router's worker list (bounded) until the worker reports ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{router}/workers") as r:
                workers = await r.json() if r.status == 200 else []
            ready = [w for w in workers if w.get("ready")]
            if ready:
                return ready[0]
            errored = [w for w in workers if w.get("error_msg")]
            assert not errored, f"worker errored: {errored}\n{container.logs()[-3000:]}"
        except aiohttp.ClientError:
            pass
        assert container.running(), f"container exited:\n{container.logs()[-4000:]}"
        await asyncio.sleep(0.25)
    raise AssertionError(f"worker not ready after {timeout_s}s:\n{container.logs()[-4000:]}")


async def _signed_call(session: aiohttp.ClientSession, router: str, api_key: str = "local",
                       endpoint: str = "local") -> tuple[int, dict]:
    async with session.post(f"{router}/route/", json={"endpoint": endpoint, "api_key": api_key, "cost": 1}) as r:
        auth = await r.json()
    assert "signature" in auth, auth
    body = {"auth_data": auth, "payload": {"input": {"workflow_json": WORKFLOW,
                                                     "return_outputs_as_base64": True}}}
    async with session.post(f"{auth['url']}/generate/sync", json=body) as r:
        return r.status, await r.json(content_type=None)


async def _forged_call(session: aiohttp.ClientSession, worker_url: str) -> int:
    auth = {"signature": "AAAA", "cost": 1, "endpoint": "local", "reqnum": 1, "url": worker_url,
            "request_idx": 1}
    body = {"auth_data": auth, "payload": {"input": {"workflow_json": WORKFLOW}}}
    async with session.post(f"{worker_url}/generate/sync", json=body) as r:
        return r.status


def _assert_image(status: int, result: dict) -> None:
    assert status == 200, result
    assert result["status"] == "success"
    (out,) = result["output"]
    assert out["mimetype"] == "image/png" and out["data"]


async def test_local_docker_run_answers_a_signed_request(image, host_double):
    worker_port, router_port = _free_port(), _free_port()
    container = Container(image, {"COMFYUI_URL": host_double, "WORKER_PORT": str(worker_port),
                                  "COMFY_WORKER_ROUTER_PORT": str(router_port),
                                  "COMFY_WORKER_BENCHMARK_WORKFLOW": BENCH})
    began = time.monotonic()
    container.start()
    try:
        router = f"http://127.0.0.1:{router_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            ready = await _wait_ready_worker(session, router, container)
            print(f"\n[docker] local mode: ready {time.monotonic() - began:.1f}s after docker run", file=sys.stderr)
            _assert_image(*await _signed_call(session, router))
            assert await _forged_call(session, ready["url"]) == 401
        logs = container.logs()
        assert "mode local" in logs and "router emulator" in logs
        assert container.stop() == 0  # SIGTERM reaches the worker (exec'd as PID 1) and it exits cleanly
    finally:
        container.remove()


async def test_vast_like_docker_run_reports_to_the_autoscaler(image, host_double):
    from worker.emulator import RouterEmulator

    emulator = RouterEmulator(endpoint="vast-test", api_key="k3y")
    router = await emulator.start("127.0.0.1", 0)
    worker_port = _free_port()
    container = Container(image, {
        "COMFYUI_URL": host_double, "CONTAINER_ID": "31337", "REPORT_ADDR": router, "PUBLIC_IPADDR": "127.0.0.1",
        "WORKER_PORT": str(worker_port), f"VAST_TCP_PORT_{worker_port}": str(worker_port), "USE_SSL": "false",
        "COMFY_WORKER_BENCHMARK_WORKFLOW": BENCH})
    began = time.monotonic()
    container.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            ready = await _wait_ready_worker(session, router, container)
            print(f"\n[docker] Vast mode: ready {time.monotonic() - began:.1f}s after docker run", file=sys.stderr)
            assert ready["id"] == 31337
            _assert_image(*await _signed_call(session, router, api_key="k3y", endpoint="vast-test"))
            assert await _forged_call(session, ready["url"]) == 401
        logs = container.logs()
        assert "mode vast" in logs and "Vast: container 31337" in logs and "router emulator" not in logs
        assert any(r.get("max_perf") for r in emulator.reports)
    finally:
        container.remove()
        await emulator.stop()
