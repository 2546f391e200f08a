"""Which custom node pack provides a class: the manifest's packs, its commented examples, a known map.

`PackIndex` answers "install which pack?" for a missing class or sampler, in that order of
trust; `describe_hint` words the answer for an error message. Used by
comfy_bridge/provision/verify.py and worker/readiness.py.
"""

from __future__ import annotations

import re
import tomllib
from typing import Literal

from pydantic import BaseModel, ValidationError

from comfy_bridge.provision.known_packs import guess_pack
from comfy_bridge.provision.manifest import CustomNodePack, Manifest


class PackHint(BaseModel):
    name: str
    repo: str | None = None
    where: Literal["manifest", "manifest_comment", "known"] = "known"


def commented_packs(manifest_text: str) -> list[CustomNodePack]:
    """The `# [[custom_nodes]]` blocks a manifest ships commented out, parsed as if enabled."""
    packs: list[CustomNodePack] = []
    lines = manifest_text.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^#\s*\[\[custom_nodes\]\]\s*$", lines[i]):
            block = ["[[custom_nodes]]"]
            i += 1
            while i < len(lines) and lines[i].startswith("#") and not re.match(r"^#\s*\[", lines[i]):
                body = re.sub(r"^#\s?", "", lines[i])
                if re.match(r"^\s*[A-Za-z_]+\s*=", body) or re.match(r"^\s*[\"\]]", body):
                    block.append(body)
                i += 1
            try:
                raw = tomllib.loads("\n".join(block))
                packs.append(CustomNodePack.model_validate(raw["custom_nodes"][0]))
            except (tomllib.TOMLDecodeError, ValidationError, KeyError, IndexError):
                pass
            continue
        i += 1
    return packs


class PackIndex:
    """class -> the pack that provides it: manifest first, then its commented examples, then known."""

    def __init__(self, manifest: Manifest | None = None, manifest_text: str | None = None) -> None:
        self.hints: dict[str, PackHint] = {}
        self.samplers: dict[str, PackHint] = {}
        if manifest_text is None and manifest is not None and manifest.source is not None:
            try:
                manifest_text = manifest.source.read_text(encoding="utf-8")
            except OSError:
                manifest_text = None
        enabled = manifest.custom_nodes if manifest else []
        for where, packs in (("manifest_comment", commented_packs(manifest_text or "")), ("manifest", enabled)):
            for p in packs:
                hint = PackHint(name=p.name, repo=p.repo, where=where)  # type: ignore[arg-type]
                for cls in p.provides:
                    self.hints[cls] = hint
                for name in (*p.samplers, *p.schedulers):
                    self.samplers[name] = hint

    def for_class(self, cls: str) -> PackHint | None:
        if cls in self.hints:
            return self.hints[cls]
        known = guess_pack(cls)
        return PackHint(name=known.name, repo=known.repo, where="known") if known else None


def describe_hint(hint: PackHint | None) -> str:
    if hint is None:
        return "no known pack provides it: find the pack and add a [[custom_nodes]] entry to the manifest"
    if hint.where == "manifest":
        return f"pack {hint.name} (in the manifest) should provide it: it probably failed to import " \
               "(look for IMPORT FAILED in ComfyUI's log)"
    if hint.where == "manifest_comment":
        return f"pack {hint.name} provides it: uncomment its [[custom_nodes]] block in the manifest"
    return f"pack {hint.name} ({hint.repo}) provides it: add it as a [[custom_nodes]] entry pinned to a commit"
