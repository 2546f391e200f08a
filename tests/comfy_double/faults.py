"""Scriptable faults: what reliability tests switch on to make the double misbehave
the way a real ComfyUI on a rented GPU does (OOM, CUDA errors, hangs, dropped sockets,
a slow /history, failing uploads, a dead port)."""

from __future__ import annotations

from dataclasses import dataclass, field

OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
            "have accidentally set the batch_size to a large number.")


@dataclass
class ExecError:
    """An exception to raise inside one node of a coming prompt.

    node_id / class_type pick the node (first match among the nodes that really
    execute); neither: the first node that executes. `exception_type` is the dotted
    name ComfyUI reports (`module.QualName`), e.g. "torch.OutOfMemoryError"."""

    exception_type: str = "torch.OutOfMemoryError"
    message: str = "Allocation on device "
    node_id: str | None = None
    class_type: str | None = None


@dataclass
class Faults:
    exec_errors: list[ExecError] = field(default_factory=list)  # consumed one per prompt
    hang_prompts: int = 0              # next N prompts never finish until interrupted or released
    close_ws_prompts: int = 0          # next N prompts: every websocket is closed at their first executed node
    history_delay_s: float = 0.0       # GET /history and /history/{id} answer this much later
    upload_status: int | None = None   # POST /upload/image answers this status...
    upload_failures: int | None = None  # ...this many times (None: until cleared)
    http_status: dict[str, int] = field(default_factory=dict)  # path -> status, any method (e.g. "/prompt": 503)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]
