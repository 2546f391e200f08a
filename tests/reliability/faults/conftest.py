"""The fault-injection suite: each test injects one fault, records what the caller got,
what the autoscaler was told and whether the next request succeeded; test_document.py,
run last, checks docs/reliability.md says exactly that (tests never rewrite tracked
files), or rewrites it when asked:

    RELIABILITY_DOC=write ./dev.sh test tests/reliability/faults

Rows are recorded with the `record_fault` fixture. To add a fault: a FAULTS entry (its
place is its row's place in the table) and a test that calls `record_fault(id, ...)`,
then regenerate the document with the command above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.reliability.faults.stack import Stack, start_stack

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "reliability.md"
REGENERATE = "RELIABILITY_DOC=write ./dev.sh test tests/reliability/faults"

# (id, fault as the table names it, how it is injected). Order = table order.
FAULTS: list[tuple[str, str, str]] = [
    ("killed", "ComfyUI killed mid-prompt",
     "SIGKILL to the supervised ComfyUI process while a prompt runs"),
    ("external_restart", "ComfyUI restarted under an unsupervised bridge",
     "the ComfyUI double stops (losing its queue) and starts again mid-prompt; bridge with --comfyui-url"),
    ("crash_loop", "ComfyUI keeps crashing (K crashes in M minutes)",
     "SIGKILL, then every restart exits at once (3 crashes in 600 s)"),
    ("hung_deadline", "ComfyUI hung: request deadline",
     "a prompt that never finishes, request timeout_s=0.5"),
    ("slow_silent", "slow silent node",
     "a node works 4 s without sending any event (4x watchdog_silence_s=1); ComfyUI answers its API"),
    ("hung_silent", "ComfyUI hung: prompt running but silent (watchdog)",
     "a prompt that never finishes and sends no event for watchdog_silence_s=1, timeout_s=3; "
     "ComfyUI answers its API"),
    ("hung_process", "ComfyUI hung: process frozen (watchdog)",
     "SIGSTOP to the ComfyUI process mid-prompt: its port accepts but never answers"),
    ("ws_closed", "websocket closed mid-prompt",
     "ComfyUI closes every websocket at the prompt's first node; execution goes on"),
    ("history_slow", "/history slow", "every GET /history answers 1.5 s late"),
    ("s3_down", "S3 down", "the request's SeaweedFS S3 server is killed before delivery"),
    ("s3_back", "S3 back after an outage",
     "the bridge's path to SeaweedFS is cut (a TCP forwarder stops listening) before delivery, then restored"),
    ("same_request_id", "same request_id twice",
     "while a request runs, its request_id comes again: the same payload (a resend), then another payload"),
    ("webhook_down", "webhook down", "the request's webhook URL refuses connections"),
    ("disconnect", "client disconnect, no destination",
     "the caller closes its connection mid-prompt; outputs would come back inline"),
    ("disconnect_webhook", "client disconnect, webhook destination",
     "the caller closes its connection mid-prompt; the request has a webhook"),
    ("disk_full_comfy", "output write failing in ComfyUI (disk full)",
     "SaveImage raises OSError [Errno 28] No space left on device"),
    ("disk_full_bridge", "output write failing in the bridge (disk full)",
     "writing outputs for delivery raises OSError ENOSPC"),
    ("oom_once", "GPU out of memory once", "the first attempt raises torch.OutOfMemoryError"),
    ("oom_twice", "GPU out of memory again after the retry",
     "both attempts raise torch.OutOfMemoryError"),
    ("cuda_fatal", "CUDA-fatal execution error",
     "a node raises 'CUDA error: an illegal memory access was encountered'"),
]
_KNOWN = {f[0] for f in FAULTS}


@dataclass
class FaultRow:
    fault: str
    level: str            # "worker" (emulator + PyWorker + bridge + ComfyUI process) or "bridge"
    status: str           # what the caller got: "503", "200", "- (caller left)"
    body: str             # error type and retriable, or a short success note
    autoscaler: str       # the worker's error_msg to the autoscaler, or "nothing"
    next_ok: bool         # the request after the fault succeeded
    note: str = ""


_rows: dict[str, FaultRow] = {}


@pytest.fixture
def record_fault() -> Callable[..., None]:
    def record(fault: str, **row: object) -> None:
        assert fault in _KNOWN, fault
        _rows[fault] = FaultRow(fault=fault, **row)  # type: ignore[arg-type]

    return record


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker stack (router emulator, `comfy-worker serve --comfyui-path`, the bridge
    inside it, the ComfyUI double as its supervised child) for the faults it survives."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The document check runs after every fault test, whatever order they were given in."""
    last = [i for i in items if i.path.name == "test_document.py"]
    items[:] = [i for i in items if i not in last] + last


def recorded() -> dict[str, FaultRow]:
    """The rows this session's fault tests recorded so far."""
    return dict(_rows)


def row_line(fid: str) -> str:
    """The table line of a recorded fault."""
    name, how = next((n, h) for f, n, h in FAULTS if f == fid)
    r = _rows[fid]
    return (f"| {name} | {how} | {r.level} | {r.status} | {_cell(r.body)} | {_cell(r.autoscaler)} | "
            f"{'yes' if r.next_ok else 'no'} | {_cell(r.note)} |")


def render() -> str:
    lines = [
        "# Reliability: what each fault does to a caller",
        "",
        "Generated by the fault-injection suite (`tests/reliability/faults/`); do not edit by",
        "hand. Regenerate it (written only when every fault ran and passed) with",
        "",
        f"    {REGENERATE}",
        "",
        "Without `RELIABILITY_DOC=write` the suite checks this file against what it observed,",
        "and fails naming that command when they differ.",
        "",
        "Each row injects one fault into a running stack and records the HTTP status and",
        "error the caller got, the `error_msg` the worker sent the autoscaler in",
        "`/worker_status/` (a non-empty one makes Vast replace the worker), and whether the",
        "next request succeeded (a client retrying 503 and 429 as the contract says).",
        "",
        "- *worker*: the full local stack: the Vast router emulator, `comfy-worker serve` (the",
        "  unmodified `vastai` PyWorker framework, signatures checked) with the bridge inside,",
        "  and the ComfyUI double as the supervised child process it launches, kills and",
        "  restarts.",
        "- *bridge*: the bridge app in front of the in-process ComfyUI double (faults that do",
        "  not involve Vast or need hooks inside the process).",
        "",
        "| fault | injected as | level | caller got | error (type, retriable) | autoscaler told | next request OK | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row_line(fid) for fid, _, _ in FAULTS]
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
