"""cvw_gc_freeze: a ComfyUI custom-node pack with no nodes that calls `gc.freeze()`.

Why: ComfyUI's prompt loop runs `gc.collect()` at most every 10 s right after a prompt;
with its nodes loaded the collector walks about half a million objects, holding the GIL
for 250-530 ms, so whatever comes next (POST /prompt, the next prompt's start, the
`executing: null` message, GET /history) waits. Freezing moves every object alive now
into a permanent generation the collector skips; what later prompts allocate is still
collected. The pack must load after every other pack, so it is given to ComfyUI as an
extra custom-node folder (`--extra-model-paths-config` with a `custom_nodes:` entry,
written by comfy_bridge/comfyui/gc_freeze.py), which ComfyUI imports after its own
custom_nodes/ folder. ComfyUI's files are not changed.
"""

import gc
import logging
import time

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


def _freeze() -> None:
    started = time.perf_counter()
    gc.collect()  # drop startup garbage first: frozen objects are never freed
    gc.freeze()
    logging.info(
        "cvw_gc_freeze: froze %d startup objects in %.0f ms; gc.collect() now skips them",
        gc.get_freeze_count(), (time.perf_counter() - started) * 1000,
    )


_freeze()
