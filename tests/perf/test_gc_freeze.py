"""The gc.freeze pack: a launched ComfyUI loads it last, and it freezes the startup objects.

The pack is loaded here the way ComfyUI loads an extra custom-node folder (the double's
tests/comfy_double/gc_pause.py does the same import), in a child Python so this test
process's collector is left alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from comfy_bridge.comfyui import gc_freeze
from tests.comfy_double.gc_pause import custom_node_dirs

REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import gc, json, sys
from pathlib import Path
from tests.comfy_double.gc_pause import GcPause
pause = GcPause(objects=int(sys.argv[2]), interval_s=0)
pause.load([Path(sys.argv[1])] if sys.argv[1] else [])
pause.after_prompt()
print(json.dumps({"frozen": gc.get_freeze_count(), "pauses": len(pause.pauses_ms)}))
"""


def _load_in_child(config: str, objects: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, config, str(objects)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_config_points_at_a_folder_holding_only_the_pack(tmp_path: Path) -> None:
    flag, config = gc_freeze.launch_args(tmp_path)
    assert flag == "--extra-model-paths-config" and Path(config).parent == tmp_path
    assert custom_node_dirs(Path(config)) == [gc_freeze.PACK_DIR]
    packs = [p.name for p in gc_freeze.PACK_DIR.iterdir() if p.name != "__pycache__"]
    assert packs == [gc_freeze.PACK_NAME]
    assert gc_freeze.launch_args(tmp_path) == [flag, config]  # rewriting is idempotent


def test_pack_freezes_what_was_loaded_before_it(tmp_path: Path) -> None:
    config = gc_freeze.write_config(tmp_path)
    with_pack = _load_in_child(str(config), 50_000)
    without = _load_in_child("", 50_000)
    assert with_pack["frozen"] >= 50_000 and without["frozen"] == 0
    assert with_pack["pauses"] == without["pauses"] == 1  # the collection still runs, over fewer objects


def test_cli_prints_the_flag(tmp_path: Path, capsys) -> None:
    assert gc_freeze.main([str(tmp_path)]) == 0
    assert f"--extra-model-paths-config {tmp_path / gc_freeze.CONFIG_NAME}" in capsys.readouterr().out
