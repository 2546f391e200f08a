"""Replays recorded ComfyUI traces against a ComfyDouble and lists structural differences.

A trace is `{"scenario", "events": [http | ws_text | ws_binary | note]}`. The replay sends
the HTTP requests in order (trace prompt ids swapped for the double's), waits before each
for the websocket message that preceded it in the trace, and collects the double's
websocket traffic. The comparison ignores ids, timestamps and paths: status codes,
content types, JSON key sets and value types (exact values for protocol words such as
error `type`s and node ids), per-prompt event sequences grouped by node (ComfyUI's output
order comes from a Python set, so sibling output nodes may run in another order), binary
frame headers, and the sequence of `status` queue counts.

Two things only timing decides are accepted either way: the order of the errors ComfyUI
lists for one node in `node_errors` (it validates inputs in `set` order, so it moves with
the process's hash seed), and /history fetched right on a terminal event (the /history
race: `{}` or the entry, see the trace `note`s). Waits default to 20 s; a slow real
server gets more through `replay_trace(..., timeout_s=...)`.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui-protocol"

# keys whose values must be equal, not just of the same type
EXACT_KEYS = {
    "type", "message", "details", "status_str", "completed", "state", "class_type", "input_name", "node_type",
    "exception_type", "node", "display_node", "node_id", "display_node_id", "real_node_id", "parent_node_id",
    "parent_node", "subfolder", "received_type", "dependent_outputs", "executed", "value", "max", "prompt_id",
    "queue_remaining", "linked_node", "received_value", "input_config", "name", "output_node", "category",
    "output", "output_name", "input_order", "comfyui_version",
}
IGNORED_KEYS = {"sid", "timestamp", "t_ms"}
TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}
DEFAULT_TIMEOUT_S = 20.0
# `$...node_errors.<node id>.errors`: one node's validation errors, in hash-seed order.
NODE_ERRORS_LIST = re.compile(r"\.node_errors\.[^.]+\.errors$")
NODE_EVENTS = {"progress_state", "executing", "executed", "progress", "binary"}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def substitute(obj: Any, ids: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return ids.get(obj, obj)
    if isinstance(obj, list):
        return [substitute(x, ids) for x in obj]
    if isinstance(obj, dict):
        return {ids.get(k, k): substitute(v, ids) for k, v in obj.items()}
    return obj


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return type(v).__name__


def shape_diff(exp: Any, got: Any, path: str = "$", exact: bool = False) -> list[str]:
    """Differences in structure between an expected (recorded) and an actual JSON value."""
    if exact and not isinstance(exp, (dict,)):
        return [] if exp == got else [f"{path}: expected {exp!r}, got {got!r}"]
    if _kind(exp) != _kind(got):
        return [f"{path}: expected {_kind(exp)} ({str(exp)[:60]}), got {_kind(got)} ({str(got)[:60]})"]
    if isinstance(exp, dict):
        out = []
        ek = {k for k in exp if k not in IGNORED_KEYS}
        gk = {k for k in got if k not in IGNORED_KEYS}
        if ek - gk:
            out.append(f"{path}: missing keys {sorted(ek - gk)}")
        if gk - ek:
            out.append(f"{path}: extra keys {sorted(gk - ek)}")
        for k in sorted(ek & gk):
            out += shape_diff(exp[k], got[k], f"{path}.{k}", k in EXACT_KEYS)
        return out
    if isinstance(exp, list):
        if all(isinstance(x, str) for x in exp + got):  # an enumeration (file lists, sampler names)
            return []
        if len(exp) != len(got):
            return [f"{path}: expected {len(exp)} items, got {len(got)}"]
        if NODE_ERRORS_LIST.search(path):
            exp, got = sorted(exp, key=_error_key), sorted(got, key=_error_key)
        out = []
        for i, (a, b) in enumerate(zip(exp, got)):
            out += shape_diff(a, b, f"{path}[{i}]")
        return out
    return []


def _error_key(error: Any) -> str:
    """Sort key of one node error: what it is and which input it names, not where it was listed."""
    if not isinstance(error, dict):
        return json.dumps(error, sort_keys=True, default=str)
    extra = error.get("extra_info") if isinstance(error.get("extra_info"), dict) else {}
    return json.dumps([error.get("type"), extra.get("input_name"), error.get("details"), error.get("message")],
                      default=str)


# ------------------------------------------------------------------ websocket streams

@dataclass
class WsMsg:
    type: str
    data: Any = None
    header: list[int] | None = None  # binary frames
    magic: str = ""


def _prompt_of(m: WsMsg) -> str | None:
    return m.data.get("prompt_id") if isinstance(m.data, dict) else None


def per_prompt(msgs: list[WsMsg]) -> dict[str, list[WsMsg]]:
    """Messages carrying a prompt_id, plus binary frames, grouped by prompt."""
    out: dict[str, list[WsMsg]] = {}
    current = None
    for m in msgs:
        pid = _prompt_of(m)
        if m.type == "binary":
            if current is not None:
                out[current].append(m)
            continue
        if pid is None:
            continue
        current = pid
        out.setdefault(pid, []).append(m)
    return out


def segments(stream: list[WsMsg]) -> tuple[list[str], dict[str, list[WsMsg]], list[str], list[str]]:
    """(head types, node -> its messages, tail types, node order of `executing`)."""
    head: list[str] = []
    nodes: dict[str, list[WsMsg]] = {}
    tail: list[str] = []
    order: list[str] = []
    current = None
    for m in stream:
        t = m.type
        if t == "executing" and m.data.get("node") is None:
            tail.append("executing:null")
            continue
        if t in TERMINAL or tail:
            tail.append(t)
            continue
        if t not in NODE_EVENTS:
            head.append(t)
            continue
        node = None
        if t in ("executing", "executed", "progress"):
            node = m.data.get("node")
        elif t == "progress_state":
            running = [n for n, s in m.data.get("nodes", {}).items() if s.get("state") == "running"]
            node = running[-1] if running else current
        else:
            node = current
        if t == "executing":
            order.append(node)
        current = node
        nodes.setdefault(str(node), []).append(m)
    return head, nodes, tail, order


def compare_prompt(exp: list[WsMsg], got: list[WsMsg], label: str) -> list[str]:
    eh, en, et, _ = segments(exp)
    gh, gn, gt, _ = segments(got)
    out = []
    if eh != gh:
        out.append(f"{label}: head {eh} != {gh}")
    if et != gt:
        out.append(f"{label}: tail {et} != {gt}")
    if set(en) != set(gn):
        out.append(f"{label}: nodes with events {sorted(en)} != {sorted(gn)}")
    for node in sorted(set(en) & set(gn)):
        ea = [m.type for m in en[node]]
        ga = [m.type for m in gn[node]]
        if ea != ga:
            out.append(f"{label} node {node}: events {ea} != {ga}")
            continue
        for i, (a, b) in enumerate(zip(en[node], gn[node])):
            if a.type == "binary":
                if a.header != b.header or a.magic != b.magic:
                    out.append(f"{label} node {node} binary #{i}: {a.header}/{a.magic} != {b.header}/{b.magic}")
            elif a.type == "progress_state":
                # the set of nodes reported is deterministic only up to sibling order
                out += shape_diff(a.data["nodes"].get(node), b.data["nodes"].get(node), f"{label} node {node} {a.type}#{i}")
            else:
                out += shape_diff(a.data, b.data, f"{label} node {node} {a.type}#{i}")
    for a, b in zip([m for m in exp if m.type in TERMINAL], [m for m in got if m.type in TERMINAL]):
        out += shape_diff(a.data, b.data, f"{label} {a.type}")
    return out


# ------------------------------------------------------------------ replay

@dataclass
class Replay:
    base: str
    session: aiohttp.ClientSession
    client_id: str
    ids: dict[str, str] = field(default_factory=dict)  # trace id -> double id
    msgs: list[WsMsg] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    new_msg: asyncio.Event = field(default_factory=asyncio.Event)
    ws: aiohttp.ClientWebSocketResponse | None = None
    history_probes: list[tuple[str, Any]] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S

    async def reader(self) -> None:
        assert self.ws is not None
        async for m in self.ws:
            if m.type == aiohttp.WSMsgType.TEXT:
                j = json.loads(m.data)
                self.msgs.append(WsMsg(j["type"], j["data"]))
            elif m.type == aiohttp.WSMsgType.BINARY:
                b = m.data
                self.msgs.append(WsMsg("binary", None, [int.from_bytes(b[0:4], "big"), int.from_bytes(b[4:8], "big")], b[8:12].hex()))
            self.new_msg.set()

    async def wait_for(
        self, kind: str, pid: str | None, nth: int, node_null: bool = False, timeout: float | None = None
    ) -> None:
        timeout = self.timeout_s if timeout is None else timeout

        def count() -> int:
            n = 0
            for m in self.msgs:
                if m.type != kind or (pid is not None and _prompt_of(m) != pid):
                    continue
                if kind == "executing" and node_null != (m.data.get("node") is None):
                    continue
                n += 1
            return n

        async def loop() -> None:
            while count() < nth:
                self.new_msg.clear()
                await self.new_msg.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {kind} #{nth} for {pid} (got {[m.type for m in self.msgs][-12:]})") from None


def _upload_form(resp: dict) -> aiohttp.FormData:
    name = resp["name"]
    if name.startswith("corrupt"):
        data = b"this is not an image at all"
    else:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, format="PNG")
        data = buf.getvalue()
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    if resp.get("subfolder"):
        form.add_field("subfolder", resp["subfolder"])
    form.add_field("type", resp.get("type", "input"))
    return form


async def replay_trace(base: str, trace: dict, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Replay one trace against a running server at `base` (the double, or a real ComfyUI);
    return the differences. `timeout_s` bounds each wait for a websocket message."""
    events = trace["events"]
    first_status = events[0]["message"]
    client_id = first_status["data"]["sid"]
    async with aiohttp.ClientSession() as session:
        r = Replay(base, session, client_id, timeout_s=timeout_s)
        r.ws = await session.ws_connect(f"{base}/ws?clientId={client_id}")
        reader = asyncio.create_task(r.reader())
        try:
            await replay_events(r, trace)
        finally:
            await r.ws.close()
            reader.cancel()
    return r.diffs


async def replay_events(r: Replay, trace: dict) -> None:
    events = trace["events"]
    label = trace["scenario"]
    seen: dict[tuple, int] = {}
    last_ws: tuple | None = None
    trace_msgs: list[WsMsg] = []
    for i, ev in enumerate(events):
        if ev["kind"] == "ws_text":
            m = ev["message"]
            trace_msgs.append(WsMsg(m["type"], m["data"]))
            pid = _prompt_of(trace_msgs[-1])
            null = m["type"] == "executing" and m["data"].get("node") is None
            key = (m["type"], pid, null)
            seen[key] = seen.get(key, 0) + 1
            last_ws = (m["type"], pid, seen[key], null)
            continue
        if ev["kind"] == "ws_binary":
            trace_msgs.append(WsMsg("binary", None, ev["header_u32_be"], ev["payload_magic"][:8]))
            continue
        if ev["kind"] != "http":
            continue
        if last_ws is not None and last_ws[1] is not None:
            kind, pid, nth, null = last_ws
            await r.wait_for(kind, r.ids.get(pid, pid), nth, null)
        await replay_http(r, ev, events[i + 1] if i + 1 < len(events) else None, label)
    # wait for the double to finish every prompt the trace ran
    for m in trace_msgs:
        if m.type == "executing" and m.data.get("node") is None:
            pid = r.ids.get(m.data["prompt_id"], m.data["prompt_id"])
            await r.wait_for("executing", pid, 1, True)
    await asyncio.sleep(0.05)  # let trailing status frames land
    compare_ws(r, trace_msgs, label)


async def replay_http(r: Replay, ev: dict, nxt: dict | None, label: str) -> None:
    method, path = ev["method"], ev["path"]
    for old, new in r.ids.items():
        path = path.replace(old, new)
    req = ev.get("request")
    where = f"{label} {method} {ev['path']}"
    kwargs: dict[str, Any] = {}
    if path == "/upload/image":
        kwargs["data"] = _upload_form(ev["response"])
    elif method == "POST" and req is None:
        kwargs["data"] = b"{not json"
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif req is not None:
        kwargs["json"] = substitute(req, r.ids)
    async with r.session.request(method, r.base + path, **kwargs) as resp:
        body = await resp.read()
        ctype = resp.headers.get("Content-Type")
        status = resp.status
    if status != ev["status"]:
        r.diffs.append(f"{where}: status {ev['status']} != {status} ({body[:200]!r})")
        return
    if ctype != ev["content_type"]:
        r.diffs.append(f"{where}: content type {ev['content_type']!r} != {ctype!r}")
    if "response_bytes" in ev:
        if ev["response_bytes"] == 0 and body:
            r.diffs.append(f"{where}: expected an empty body, got {len(body)} bytes")
        if ev.get("content_type") == "image/png" and not body.startswith(b"\x89PNG"):
            r.diffs.append(f"{where}: not a PNG")
        return
    got = json.loads(body)
    exp = ev.get("response")
    if method == "POST" and path == "/prompt" and isinstance(exp, dict) and "prompt_id" in exp:
        r.ids[exp["prompt_id"]] = got["prompt_id"]
    exp = substitute(exp, r.ids)
    if isinstance(exp, str) and exp.startswith("<") and exp.endswith("bytes of JSON>"):
        return  # the recorder kept only the size of big bodies
    probe = nxt is not None and nxt["kind"] == "note" and nxt["text"].startswith("history fetched on execution_")
    if probe:
        # The /history race: fetched on the terminal event, timing decides. The double answers
        # {} (deterministic with history_lag_s, pinned by test_double_behaviour); a real server
        # answers {} or the entry, which must then look like the recorded one.
        r.history_probes.append((path, got))
        if got != {}:
            r.diffs.extend(shape_diff(exp, got, f"{where} (history on the terminal event)"))
        return
    r.diffs.extend(shape_diff(exp, got, where))


def compare_ws(r: Replay, trace_msgs: list[WsMsg], label: str) -> None:
    got = r.msgs
    if not got or got[0].type != "status" or "sid" not in got[0].data:
        r.diffs.append(f"{label}: first ws message is not status with sid: {got[:1]}")
    else:
        r.diffs.extend(shape_diff(trace_msgs[0].data, got[0].data, f"{label} ws status"))
    exp_status = [m.data["status"]["exec_info"]["queue_remaining"] for m in trace_msgs[1:] if m.type == "status"]
    got_status = [m.data["status"]["exec_info"]["queue_remaining"] for m in got[1:] if m.type == "status"]
    if exp_status != got_status:
        r.diffs.append(f"{label}: status queue counts {exp_status} != {got_status}")
    exp_p = per_prompt(trace_msgs)
    got_p = per_prompt(got)
    for pid, stream in exp_p.items():
        mine = got_p.get(r.ids.get(pid, pid))
        if mine is None:
            r.diffs.append(f"{label}: no websocket events for prompt {pid}")
            continue
        r.diffs.extend(compare_prompt([substitute_msg(m, r.ids) for m in stream], mine, f"{label} ws prompt"))
    extra = set(got_p) - {r.ids.get(p, p) for p in exp_p}
    if extra:
        r.diffs.append(f"{label}: events for unexpected prompts {sorted(extra)}")


def substitute_msg(m: WsMsg, ids: dict[str, str]) -> WsMsg:
    return WsMsg(m.type, substitute(m.data, ids), m.header, m.magic)
