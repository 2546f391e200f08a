"""The real tier: the bridge against a real ComfyUI, run only when COMFYUI_PATH names one.

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] \
        .venv/bin/python -m pytest tests/real -q

One ComfyUI per session, started with `--cpu` on a free port with every folder it writes
under a temporary base (see launcher.py), stopped (its process group) at the end.
Random-weight checkpoints in the real architectures are built once by
tools/make_checkpoints.py into $COMFYUI_TEST_CACHE (default ~/.cache/comfy-vast-worker).

Other knobs: COMFYUI_TEST_SDXL=1 also builds and links an SDXL checkpoint (loading it
takes minutes on a CPU); COMFYUI_EXTRA_ARGS adds flags to ComfyUI's command line;
COMFYUI_TEST_TIMEOUT (default 900) bounds each test, including the session's start-up.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.real import graphs
from tests.real.direct import run_prompt
from tests.real.launcher import RealComfy, start

HERE = Path(__file__).resolve().parent
SKIP_REASON = (
    "real ComfyUI tier: set COMFYUI_PATH to a ComfyUI install (and COMFYUI_PYTHON to its "
    "python if it is not beside main.py) to run it"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a real-tier test that takes a minute or more on a CPU "
                                       "(deselect with -m 'not slow')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = bool(os.environ.get("COMFYUI_PATH"))
    timeout = float(os.environ.get("COMFYUI_TEST_TIMEOUT", "900"))
    for item in items:
        if HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.real)
        item.add_marker(pytest.mark.timeout(timeout))
        if not enabled:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def real_comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealComfy]:
    raw = os.environ.get("COMFYUI_PATH")
    if not raw:
        pytest.skip(SKIP_REASON)
    path = Path(raw).expanduser().resolve()
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={raw} has no main.py: it must name a ComfyUI install")
    archs = ["sd15"] + (["sdxl"] if os.environ.get("COMFYUI_TEST_SDXL") == "1" else [])
    comfy = start(
        path,
        tmp_path_factory.mktemp("comfyui"),
        archs=archs,
        extra_args=shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", "")),
    )
    try:
        yield comfy
    finally:
        comfy.stop()


@pytest.fixture(scope="session")
def object_info(real_comfy: RealComfy) -> dict[str, Any]:
    return real_comfy.get_json("/object_info", timeout=120)


@pytest.fixture(scope="session")
def sd15_warm(real_comfy: RealComfy) -> RealComfy:
    """Load the SD1.5 checkpoint and encode the shared prompts once (a one-step run).

    Later graphs share those nodes' inputs, so ComfyUI serves them from its cache and
    each test pays only for its own sampler.
    """
    run = run_prompt(real_comfy, graphs.sd15_t2i(steps=1, seed=0), timeout_s=600)
    assert run.status == 200, run.answer
    assert "execution_success" in run.types(), run.events[-3:]
    return real_comfy


@dataclass
class Bridge:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    async def generate(self, graph: dict[str, Any] | None = None, **fields: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"return_outputs_as_base64": True, **fields}
        if graph is not None:
            body["workflow_json"] = graph
        async with self.session.post(self.url + "/generate/sync", json={"input": body}) as r:
            return r.status, await r.json()


@pytest.fixture
async def make_bridge() -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    """Bridges (build_app behind a loopback site) in front of a ComfyUI; all closed after."""
    from comfy_bridge.app import build_app
    from comfy_bridge.settings import BridgeSettings

    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(comfy: RealComfy, **settings: Any) -> Bridge:
        app = build_app(BridgeSettings(comfyui_url=comfy.url, comfyui_path=comfy.base, **settings))
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        sessions.append(session)
        return Bridge(f"http://127.0.0.1:{port}", app, session)

    yield make
    for s in sessions:
        await s.close()
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def bridge(real_comfy: RealComfy, make_bridge: Callable[..., Awaitable[Bridge]]) -> Bridge:
    """A bridge that reads outputs from the real ComfyUI's folder, as in production."""
    return await make_bridge(real_comfy)
