"""Split models_manifest.toml into the part each image layer depends on (stdlib only).

Why: Docker caches a COPY by the copied file's content. The Dockerfile copies these
derived files instead of the whole manifest, so adding a model does not rebuild the
ComfyUI + PyTorch layer, and bumping a custom node does not re-download models:

    comfyui.toml  [comfyui] only                      -> the ComfyUI install layer
    nodes.toml    [comfyui] + [[custom_nodes]]        -> the custom nodes layer
    models.toml   the whole manifest                  -> the baked-models layer

Usage: python3 manifest_sections.py MANIFEST OUT_DIR
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any


def _value(v: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"unsupported manifest value {v!r}")


def _table(header: str, table: dict[str, Any]) -> str:
    return "\n".join([header, *(f"{k} = {_value(v)}" for k, v in table.items())]) + "\n"


def render(data: dict[str, Any], sections: tuple[str, ...]) -> str:
    out: list[str] = []
    for name in sections:
        part = data.get(name)
        if isinstance(part, dict):
            out.append(_table(f"[{name}]", part))
        elif isinstance(part, list):
            out += [_table(f"[[{name}]]", item) for item in part]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    manifest, out_dir = Path(argv[1]), Path(argv[2])
    data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comfyui.toml").write_text(render(data, ("comfyui",)))
    (out_dir / "nodes.toml").write_text(render(data, ("comfyui", "custom_nodes")))
    (out_dir / "models.toml").write_text(render(data, ("comfyui", "custom_nodes", "models")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
