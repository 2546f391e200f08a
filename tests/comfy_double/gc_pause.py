"""ComfyUI's 10-second garbage-collection pause, reproduced for real in the double.

Why: ComfyUI's prompt loop calls `gc.collect()` right after a prompt, at most every 10 s
(its main.py, `gc_collect_interval = 10.0`); with its nodes loaded the collector walks
about half a million objects and holds the GIL for 250-530 ms (../shared/FACTS.md), so
the next POST /prompt, prompt start, `executing: null` or GET /history waits. The double
keeps `objects` live containers (ComfyUI's loaded node modules stand-in) and runs the same
collection, synchronously, on its one event loop: the same stall, from the same cause.
Like ComfyUI, it imports the packs in the `custom_nodes:` folders of each
`--extra-model-paths-config` file after start-up, so the worker's gc.freeze pack
(comfy_bridge/comfyui/gc_freeze_pack/) removes the stall here as it does in ComfyUI.
Off (objects=0) unless a test or bench asks for it.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("comfy_double")


def custom_node_dirs(config: Path) -> list[Path]:
    """The `custom_nodes:` folders of an extra-model-paths YAML (the one-line form only)."""
    found = []
    for line in config.read_text().splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key == "custom_nodes" and value.strip():
            path = Path(value.strip().strip("'\""))
            found.append(path if path.is_absolute() else (config.parent / path).resolve())
    return found


def load_packs(folder: Path) -> list[str]:
    """Import each pack (a folder with __init__.py) in `folder`, as ComfyUI does."""
    loaded = []
    for pack in sorted(folder.iterdir()):
        init = pack / "__init__.py"
        if pack.name == "__pycache__" or not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(f"double_custom_node_{pack.name}", init)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded.append(pack.name)
    return loaded


class GcPause:
    """Holds the stand-in startup objects and collects after prompts, at most every interval."""

    def __init__(self, objects: int = 0, interval_s: float = 10.0) -> None:
        self.objects = objects
        self.interval_s = interval_s
        self.pauses_ms: list[float] = []
        self._ballast: list[list[int]] = []
        self._last = float("-inf")

    def load(self, extra_configs: list[Path]) -> None:
        """Start-up: make the objects, then import the extra packs (they load last)."""
        if self.objects:
            self._ballast = [[i] for i in range(self.objects)]
        for config in extra_configs:
            for folder in custom_node_dirs(config):
                log.info("double: loaded custom nodes %s from %s", load_packs(folder), folder)

    def after_prompt(self) -> None:
        """ComfyUI's `gc.collect()` after a prompt: blocks the whole loop while it runs."""
        if not self.objects:
            return
        now = time.perf_counter()
        if now - self._last < self.interval_s:
            return
        gc.collect()
        self._last = time.perf_counter()
        self.pauses_ms.append((self._last - now) * 1000)
