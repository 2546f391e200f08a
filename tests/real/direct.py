"""Talk to the real ComfyUI directly (no bridge): to check the fixture and warm models up.

A prompt is finished when ComfyUI sends `executing` with `node: null` for it; only then
is it in /history (see the /history race in comfyui-protocol/README.md).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.sync.client import connect

from tests.real.launcher import RealComfy


@dataclass
class Run:
    prompt_id: str
    status: int
    answer: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] | None = None

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((e["data"] for e in self.events if e["type"] == kind), None)


def run_prompt(comfy: RealComfy, graph: dict[str, Any], timeout_s: float = 300) -> Run:
    """Submit on our own websocket client id and collect its events until the prompt is done."""
    client_id = uuid.uuid4().hex
    ws_url = comfy.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    with connect(ws_url, open_timeout=30, max_size=None) as ws:
        status, answer = comfy.post_json("/prompt", {"prompt": graph, "client_id": client_id})
        if status != 200:
            return Run("", status, answer)
        run = Run(answer["prompt_id"], status, answer)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"prompt {run.prompt_id} not done in {timeout_s}s: {run.types()}")
            msg = ws.recv(timeout=remaining)
            if isinstance(msg, bytes):
                continue
            event = json.loads(msg)
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, run.prompt_id):
                continue
            run.events.append(event)
            if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == run.prompt_id:
                break
    run.history = comfy.get_json(f"/history/{run.prompt_id}").get(run.prompt_id)
    return run
