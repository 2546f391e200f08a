"""Keep the double honest: replay the recorded traces against the real ComfyUI too.

tests/contract replays tests/fixtures/comfyui-protocol/ against the ComfyDouble; here the
same replayer runs against a real server. A trace that stops matching here means the
recording (or this ComfyUI version) moved, and the double must be re-checked against it.

A fresh ComfyUI process (not the session's) so cache hits and queue counts line up with
the recording, with `--preview-method latent2rgb` as the KSampler trace was recorded.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.launcher import RealComfy, start

try:  # the double's replayer (tests/contract, owned by the double's authors)
    from tests.contract import replay
    from tests.contract.test_traces import SECOND_SESSION, SESSION_ORDER
except ImportError as exc:  # pragma: no cover - only if tests/contract is reorganised
    pytest.skip(f"tests/contract replayer not importable: {exc}", allow_module_level=True)

# The recorded /history race: fetched on the terminal event, real ComfyUI answers either
# {} or the entry (the double, made deterministic, always {}); both are allowed here.
HISTORY_RACE = "history fetched on the terminal event should be empty"
# A CPU shared with other work is far slower than the recording machine.
REPLAY_WAIT_S = 300.0
_shape_diff = replay.shape_diff


def _unordered_node_errors(exp: Any, got: Any, path: str = "$", exact: bool = False) -> list[str]:
    """shape_diff, with each node's `errors` list compared in any order.

    ComfyUI validates a node's inputs in `set` order (execution.validate_inputs), so with
    Python's per-process hash seed the order of its errors changes from run to run; the
    recording holds one of those orders.
    """
    if path.endswith(".errors") and isinstance(exp, list) and isinstance(got, list):
        key = functools.partial(json.dumps, sort_keys=True, default=str)
        exp = sorted(exp, key=lambda e: key([e.get("type"), e.get("details")] if isinstance(e, dict) else e))
        got = sorted(got, key=lambda e: key([e.get("type"), e.get("details")] if isinstance(e, dict) else e))
    return _shape_diff(exp, got, path, exact)


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
            name: await replay.replay_trace(replay_comfy.url, replay.load(name))
            for name in SESSION_ORDER + SECOND_SESSION
        }

    patient = functools.partialmethod(replay.Replay.wait_for, timeout=REPLAY_WAIT_S)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay.Replay, "wait_for", patient)
        mp.setattr(replay, "shape_diff", _unordered_node_errors)
        return asyncio.run(run_all())


@pytest.mark.parametrize("name", SESSION_ORDER + SECOND_SESSION)
def test_real_comfyui_still_matches_the_recorded_trace(replayed: dict[str, list[str]], name: str) -> None:
    assert [d for d in replayed[name] if HISTORY_RACE not in d] == []
