"""Keep the double honest: replay the recorded traces against the real ComfyUI too.

tests/contract replays tests/fixtures/comfyui-protocol/ against the ComfyDouble; here the
same replayer runs against a real server. A trace that stops matching here means the
recording (or this ComfyUI version) moved, and the double must be re-checked against it.

A fresh ComfyUI process (not the session's) so cache hits and queue counts line up with
the recording, with `--preview-method latent2rgb` as the KSampler trace was recorded.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.launcher import RealComfy, start

try:  # the double's replayer (tests/contract, owned by the double's authors)
    from tests.contract import replay
    from tests.contract.test_traces import SECOND_SESSION, SESSION_ORDER
except ImportError as exc:  # pragma: no cover - only if tests/contract is reorganised
    pytest.skip(f"tests/contract replayer not importable: {exc}", allow_module_level=True)

# A CPU shared with other work is far slower than the recording machine. (The replayer
# itself accepts what only timing or the hash seed decides: /history fetched on the
# terminal event being {} or the entry, and the order of one node's validation errors.)
REPLAY_WAIT_S = 300.0


@pytest.fixture(scope="module")
def replay_comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealComfy]:
    path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    comfy = start(
        path,
        tmp_path_factory.mktemp("comfyui-replay"),
        archs=["sd15"],
        extra_args=["--preview-method", "latent2rgb",
                    *shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", ""))],
    )
    try:
        yield comfy
    finally:
        comfy.stop()


@pytest.fixture(scope="module")
def replayed(replay_comfy: RealComfy) -> dict[str, list[str]]:
    async def run_all() -> dict[str, list[str]]:
        return {
            name: await replay.replay_trace(replay_comfy.url, replay.load(name), timeout_s=REPLAY_WAIT_S)
            for name in SESSION_ORDER + SECOND_SESSION
        }

    return asyncio.run(run_all())


@pytest.mark.parametrize("name", SESSION_ORDER + SECOND_SESSION)
def test_real_comfyui_still_matches_the_recorded_trace(replayed: dict[str, list[str]], name: str) -> None:
    assert replayed[name] == []
