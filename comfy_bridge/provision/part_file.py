"""A model's `.part` file and its `.part.json` sidecar: which bytes of each chunk are on disk.

Cold starts on Vast are paid by the minute, so an interrupted download resumes from here
instead of starting over (comfy_bridge/provision/file_download.py writes it,
comfy_bridge/provision/model_state.py reads it to report a partial file). The sidecar is
trusted only when it describes this manifest entry (same sha256, size, chunk layout) and a
`.part` of the full size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from comfy_bridge.provision.json_records import read_record, write_record
from comfy_bridge.provision.manifest import ModelFile


def part_path(final: Path) -> Path:
    """Where a model is written until its sha256 matches."""
    return final.with_name(final.name + ".part")


@dataclass
class PartState:
    """Chunk layout of a `.part` file and how many bytes of each chunk are written."""

    sha256: str
    size: int
    chunk_size: int
    done: list[int]

    @property
    def n(self) -> int:
        return len(self.done)

    def span(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def remaining(self, i: int) -> int:
        start, end = self.span(i)
        return end - start + 1 - self.done[i]

    def bytes_done(self) -> int:
        return sum(self.done)

    @classmethod
    def fresh(cls, m: ModelFile, chunk_size: int) -> "PartState":
        return cls(m.sha256, m.size, chunk_size, [0] * math.ceil(m.size / chunk_size))

    @staticmethod
    def path_for(part: Path) -> Path:
        return part.with_name(part.name + ".json")

    @classmethod
    def load(cls, part: Path, m: ModelFile) -> "PartState | None":
        try:
            raw = read_record(cls.path_for(part))
            state = cls(raw["sha256"], raw["size"], raw["chunk_size"], list(raw["done"]))
        except (OSError, KeyError, TypeError):
            return None
        if state.sha256 != m.sha256 or state.size != m.size or state.chunk_size <= 0:
            return None
        if state.n != math.ceil(state.size / state.chunk_size) or part.stat().st_size != state.size:
            return None
        if any(d < 0 or d > state.span(i)[1] - state.span(i)[0] + 1 for i, d in enumerate(state.done)):
            return None
        return state

    def save(self, part: Path) -> None:
        write_record(self.path_for(part), {"sha256": self.sha256, "size": self.size,
                                           "chunk_size": self.chunk_size, "done": self.done})
