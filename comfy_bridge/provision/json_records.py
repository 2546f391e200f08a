"""The small JSON records provisioning keeps beside what it installed, read and written one way.

Which pack requirements are installed (comfy_bridge/provision/custom_nodes.py), which models
were verified (comfy_bridge/provision/model_state.py), how much of a download is on disk
(comfy_bridge/provision/part_file.py). A record that is missing or unreadable reads as empty,
so provisioning redoes the work rather than failing; one is written to a temporary file and
renamed, so a crash mid-write never leaves half a record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object at `path`, or {} when it is absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
