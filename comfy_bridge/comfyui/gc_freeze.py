"""The gc.freeze pack given to ComfyUI: where it lives, the config that loads it last.

Why: ComfyUI pauses 250-530 ms about every 10 s in `gc.collect()` (the pack's own
docstring, comfy_bridge/comfyui/gc_freeze_pack/cvw_gc_freeze/__init__.py, says how);
the pack removes the pause by freezing the collector's view of the startup objects once
every other pack has loaded. ComfyUI imports the folders of `custom_nodes:` entries of
an `--extra-model-paths-config` file after its own custom_nodes/ folder, so the pack is
given that way and ComfyUI's files stay untouched. The supervisor
(comfy_bridge/comfyui/supervisor.py) adds it to every ComfyUI it launches; for a ComfyUI
you run yourself, `python -m comfy_bridge.comfyui.gc_freeze DIR` writes the config into
DIR and prints the flag to add to ComfyUI's command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# A folder holding only the pack (cvw_gc_freeze/): ComfyUI loads every module in it.
PACK_DIR = Path(__file__).resolve().parent / "gc_freeze_pack"
PACK_NAME = "cvw_gc_freeze"
CONFIG_NAME = "cvw_gc_freeze.yaml"
FLAG = "--extra-model-paths-config"


def config_text(pack_dir: Path = PACK_DIR) -> str:
    """The extra-model-paths YAML whose one `custom_nodes:` entry is the pack's folder."""
    path = str(pack_dir.resolve())
    if any(c in path for c in "\n\"\\"):
        raise ValueError(f"the pack folder {path!r} cannot be written into YAML as is")
    return f'{PACK_NAME}:\n  custom_nodes: "{path}"\n'


def write_config(directory: Path) -> Path:
    """Write (or refresh) the config file in `directory`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONFIG_NAME
    text = config_text()
    if not target.exists() or target.read_text() != text:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return target


def launch_args(directory: Path) -> list[str]:
    """ComfyUI flags that load the pack last, the config written into `directory`."""
    return [FLAG, str(write_config(directory))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m comfy_bridge.comfyui.gc_freeze",
        description="Write the config that makes a ComfyUI you run load the gc.freeze pack "
        "last, and print the flag to add to its command line.",
    )
    p.add_argument("directory", type=Path, help="where to write " + CONFIG_NAME)
    args = p.parse_args(argv)
    flag, path = launch_args(args.directory)
    print(f"add to ComfyUI's command line: {flag} {path}")
    print("(ComfyUI's log then says: cvw_gc_freeze: froze N startup objects)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
