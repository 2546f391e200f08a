"""Prompts whose websocket events may have been missed, settled against /queue and /history.

After a reconnect or a long silence, comfy_bridge/comfyui/client.py hands its unfinished
trackers here: a prompt still queued waits on, one in /history finishes with what the
history says, one in neither was lost by a ComfyUI that restarted (503, retriable).
"""

from __future__ import annotations

from comfy_bridge import logs
from comfy_bridge.comfyui import events as ev
from comfy_bridge.comfyui.rest import ComfyRest
from comfy_bridge.comfyui.tracker import PromptTracker
from comfy_bridge.errors import BridgeError, ComfyUnavailable

log = logs.get(__name__)


async def settle_missed(rest: ComfyRest, trackers: list[PromptTracker]) -> None:
    """Settle submitted, unfinished prompts whose events we may have missed.

    /queue first, then /history: ComfyUI moves a prompt from one to the other under
    one lock, so a prompt in neither is truly lost (ComfyUI restarted).
    """
    if not trackers:
        return
    try:
        queue = await rest.queue()
    except BridgeError as exc:
        log.warning("reconcile: /queue failed: %s", exc.message)
        return
    queued = {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])
              if isinstance(item, list) and len(item) > 1}
    for tracker in trackers:
        pid = tracker.prompt_id
        if pid in queued:
            continue
        try:
            entry = await rest.history(pid)
        except BridgeError as exc:
            tracker.fail(exc)
            continue
        if entry is None:
            tracker.fail(ComfyUnavailable(
                "ComfyUI lost the prompt (not queued, not in history): it probably restarted",
                prompt_id=pid,
            ))
            continue
        tracker.history = entry
        start, end = ev.history_timestamps(entry)
        tracker.start_ms = tracker.start_ms or start
        tracker.end_ms = tracker.end_ms or end
        tracker.failure = tracker.failure or ev.history_failure(entry)
        if tracker.finish():
            log.info("prompt finished while its events were missed", extra={"fields": {"prompt_id": pid}})
