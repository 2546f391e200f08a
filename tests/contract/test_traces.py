"""Contract: the ComfyUI double answers every recorded scenario like the real server.

The traces were recorded one after another on one ComfyUI process (its prompt numbers
and caches run on from scenario to scenario), the KSampler one on a second process; the
replay does the same so cache hits line up with the recording.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.comfy_double import ComfyDouble

from .replay import FIXTURES, load, replay_trace

SESSION_ORDER = [
    "success_and_view.json",
    "cached_resubmit.json",
    "client_chosen_prompt_id.json",
    "validation_unknown_node.json",
    "validation_bad_inputs.json",
    "runtime_error.json",
    "upload_preview_and_ws_image.json",
    "interrupt_and_queue_delete.json",
    "misc_endpoints.json",
]
SECOND_SESSION = ["ksampler_progress_and_previews.json"]


async def _replay_all(root: Path) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {}
    async with ComfyDouble(root=root / "a", history_lag_s=5.0) as double:
        for name in SESSION_ORDER:
            if name.startswith("interrupt"):
                double.hang_next_prompt()  # the recorded prompt ran for 2 s; here it waits for the interrupt
            results[name] = await replay_trace(double.url, load(name))
    async with ComfyDouble(root=root / "b", history_lag_s=5.0,
                           models={"checkpoints": ["random_sd15.safetensors"]}) as double:
        for name in SECOND_SESSION:
            results[name] = await replay_trace(double.url, load(name))
    return results


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict[str, list[str]]:
    return asyncio.run(asyncio.wait_for(_replay_all(tmp_path_factory.mktemp("contract")), 60))


def test_every_trace_is_replayed() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.json")}
    assert on_disk == set(SESSION_ORDER + SECOND_SESSION)


@pytest.mark.parametrize("name", SESSION_ORDER + SECOND_SESSION)
def test_trace_structure_matches(replayed: dict[str, list[str]], name: str) -> None:
    assert replayed[name] == []
