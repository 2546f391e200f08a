"""The execution-silence watchdog: tells a slow prompt from a hung ComfyUI.

Why: many nodes run for minutes without sending one websocket event (a video VAE decode,
an upscaler, a model loading from a network volume, most custom nodes without a progress
bar). Silence alone proves nothing, and killing such work would make a healthy worker fail
every slow request, then (each restart counting as a crash in
comfy_bridge/comfyui/supervisor.py) ask Vast to replace itself. So:

- a prompt ComfyUI has run silently for `watchdog_silence_s` makes the watchdog ask
  ComfyUI (GET /system_stats and GET /queue);
- a ComfyUI that answers is not hung: a prompt still running is left to the request's own
  deadline (comfy_bridge/jobs/serving.py answers 504 then), one still pending is waiting
  its turn, and one neither running nor pending had its end missed, so it is settled from
  /history;
- only a ComfyUI that fails `watchdog_probes` probes in a row is hung: the prompt fails
  with 503 (retriable) and a supervised ComfyUI is restarted, which is a freeze and counts
  toward the supervisor's crash limit.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable

from comfy_bridge import logs
from comfy_bridge.comfyui.client import ComfyClient
from comfy_bridge.errors import BridgeError, ComfyUnavailable

log = logs.get(__name__)

# Longest one probe (/system_stats, then /queue) may take before it counts as failed.
PROBE_TIMEOUT_S = 10.0


class Watchdog:
    """Watches the prompts of one ComfyClient; `check(prompt_id)` says whether to give up.

    `on_stuck(reason)` restarts ComfyUI (a supervisor's `restart`); `spawn(awaitable)` runs
    it in the background (the runner's, so a drain waits for it).
    """

    def __init__(
        self,
        client: ComfyClient,
        silence_s: float,
        *,
        probes: int = 3,
        on_stuck: Callable[[str], Any] | None = None,
        spawn: Callable[[Awaitable[Any]], Any] | None = None,
    ) -> None:
        self.client = client
        self.silence_s = silence_s
        self.probes = max(1, probes)
        self.probe_timeout_s = min(PROBE_TIMEOUT_S, max(1.0, silence_s / 2))
        self.on_stuck = on_stuck
        self._spawn: Callable[[Awaitable[Any]], Any] = spawn or asyncio.ensure_future
        self.trips = 0  # prompts failed because ComfyUI stopped answering
        self.slow = 0  # times a silent prompt was left running because ComfyUI answered

    def silence_left(self, prompt_id: str) -> float:
        """Seconds until the running prompt has been silent for `silence_s`."""
        tracker = self.client.tracker(prompt_id)
        if tracker is None or tracker.started_at is None or tracker.future.done():
            return self.silence_s  # pending behind other prompts (or finished): waiting is not silence
        last = max(tracker.last_event_at, tracker.started_at)
        return max(0.01, last + self.silence_s - time.monotonic())

    async def check(self, prompt_id: str) -> BridgeError | None:
        """None to keep waiting; the error to fail the request with when ComfyUI is hung."""
        tracker = self.client.tracker(prompt_id)
        if tracker is None or tracker.started_at is None or tracker.future.done():
            return None
        silent_s = time.monotonic() - max(tracker.last_event_at, tracker.started_at)
        if silent_s < self.silence_s:
            return None
        position = await self._probe(prompt_id, tracker.future)
        fields = {"prompt_id": prompt_id, "silent_s": round(silent_s, 3)}
        if position == "finished":
            return None
        if position != "unresponsive":
            if position is None:
                await self.client.reconcile(prompt_id)
            elif position == "running":
                self.slow += 1
                log.info("watchdog: prompt silent for %.0fs but ComfyUI answers: a slow node, left to "
                         "the request's deadline", silent_s, extra={"fields": fields})
            tracker.last_event_at = time.monotonic()  # the silence clock starts again
            return None
        self.trips += 1
        self.client.forget(prompt_id)
        reason = (f"ComfyUI stopped answering (GET /system_stats and /queue failed {self.probes} times "
                  f"in a row) while prompt {prompt_id} was silent for {silent_s:.0f}s "
                  f"(watchdog_silence_s={self.silence_s:g})")
        log.error("watchdog: %s", reason, extra={"fields": fields})
        if self.on_stuck is not None:
            restarting = self.on_stuck(f"watchdog: {reason}")
            if inspect.isawaitable(restarting):
                self._spawn(restarting)
            what = "ComfyUI is being restarted"
        else:
            what = "ComfyUI may be hung"
        return ComfyUnavailable(f"{reason}; {what}. Retry the request.", prompt_id=prompt_id, watchdog=True)

    async def _probe(self, prompt_id: str, finished: asyncio.Future[Any]) -> str | None:
        """The prompt's place in ComfyUI's queue ("running", "pending", None), "finished"
        when its end arrived meanwhile, or "unresponsive" after `probes` failed probes in a row."""
        for attempt in range(self.probes):
            if attempt:
                await asyncio.wait({finished}, timeout=self.probe_timeout_s / 2)
            if finished.done():
                return "finished"  # the waiter has its result
            try:
                await asyncio.wait_for(self.client.system_stats(), self.probe_timeout_s)
                return await asyncio.wait_for(self.client.queue_position(prompt_id), self.probe_timeout_s)
            except (BridgeError, asyncio.TimeoutError) as exc:
                log.warning("watchdog: probe %d/%d of ComfyUI failed: %s", attempt + 1, self.probes,
                            getattr(exc, "message", None) or type(exc).__name__,
                            extra={"fields": {"prompt_id": prompt_id}})
        return "unresponsive"

