"""Prompt queue and executor, reproducing ComfyUI v0.3.64's observable behaviour:
message order, the classic cache (outputs keyed by input signature, UI outputs keyed by
node id), execution order (ExecutionList's UX-friendly pick), progress_state bookkeeping,
history written only after the terminal event has been delivered."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import images as im
from .faults import OOM_TIPS, ExecError
from .node_library import Folders, NodeDef, NodeResult
from .validation import is_link

if TYPE_CHECKING:
    from .server import ComfyDouble

MAX_HISTORY = 10000


class InterruptProcessing(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _exception_class(dotted: str) -> type[Exception]:
    module, _, name = dotted.rpartition(".")
    cls = type(name or "RuntimeError", (Exception,), {})
    cls.__module__ = module or "builtins"
    cls.__qualname__ = name or "RuntimeError"
    return cls


def full_type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------ queue

@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]

    def as_list(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    """execution.PromptQueue: pending heap, running set, history; every change broadcasts status."""

    def __init__(self, double: "ComfyDouble"):
        self.double = double
        self.pending: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict] = {}
        self.task_counter = 0
        self.not_empty = asyncio.Event()

    def remaining(self) -> int:
        return len(self.pending) + len(self.running)

    def put(self, item: QueueItem) -> None:
        self.pending.append(item)
        self.pending.sort(key=lambda i: (i.number, i.prompt_id))
        self.double.queue_updated()
        self.not_empty.set()

    async def get(self) -> tuple[QueueItem, int]:
        while not self.pending:
            self.not_empty.clear()
            await self.not_empty.wait()
        item = self.pending.pop(0)
        i = self.task_counter
        self.running[i] = copy.deepcopy(item)
        self.task_counter += 1
        self.double.queue_updated()
        return item, i

    def task_done(self, item_id: int, history_result: dict, status: dict | None) -> None:
        item = self.running.pop(item_id)
        if len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))
        self.history[item.prompt_id] = {"prompt": item.as_list(), "outputs": {}, "status": status}
        self.history[item.prompt_id].update(history_result)
        self.double.queue_updated()

    def wipe(self) -> None:
        self.pending = []
        self.double.queue_updated()

    def delete(self, prompt_id: str) -> bool:
        for x, item in enumerate(self.pending):
            if item.prompt_id == prompt_id:
                if len(self.pending) == 1:
                    self.wipe()
                else:
                    self.pending.pop(x)
                self.double.queue_updated()
                return True
        return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        if prompt_id is not None:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
        out = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, k in enumerate(self.history):
            if i >= offset:
                out[k] = self.history[k]
                if max_items is not None and len(out) >= max_items:
                    break
        return copy.deepcopy(out)


# ------------------------------------------------------------------ execution order

class ExecutionList:
    """Topological dissolve with ComfyUI's pick: output nodes first, then nodes one or
    two links upstream of an output, else the first ready node in insertion order."""

    def __init__(self, prompt: dict, is_cached, is_output):
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links = []
        while stack:
            u = stack.pop()
            if u in self.pending:
                continue
            self.pending[u] = True
            self.block_count[u] = 0
            self.blocking[u] = {}
            for v in self.prompt[u]["inputs"].values():
                if is_link(v) and not self.is_cached(v[0]):
                    stack.append(v[0])
                    links.append((v[0], v[1], u))
        for src, slot, dst in links:
            self.add_strong_link(src, slot, dst)

    def add_strong_link(self, src: str, slot: int, dst: str) -> None:
        if self.is_cached(src):
            return
        self.add_node(src)
        if dst not in self.blocking[src]:
            self.blocking[src][dst] = {}
            self.block_count[dst] += 1
        self.blocking[src][dst][slot] = True

    def empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            raise RuntimeError("Dependency cycle detected")
        for n in ready:
            if self.is_output(n):
                return n
        for n in ready:
            if any(self.is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self.is_output(b1) for b in self.blocking[n] for b1 in self.blocking[b]):
                return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for b in self.blocking[node_id]:
            self.block_count[b] -= 1
        del self.blocking[node_id]


# ------------------------------------------------------------------ progress registry

class Progress:
    def __init__(self, double: "ComfyDouble", prompt_id: str):
        self.double = double
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict] = {}

    def _send(self) -> None:
        nodes = {
            nid: {"value": s["value"], "max": s["max"], "state": s["state"], "node_id": nid,
                  "prompt_id": self.prompt_id, "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
            for nid, s in self.nodes.items() if s["state"] != "pending"
        }
        self.double.send_sync("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.double.client_id)

    def _entry(self, nid: str) -> dict:
        return self.nodes.setdefault(nid, {"state": "pending", "value": 0, "max": 1})

    def start(self, nid: str) -> None:
        e = self._entry(nid)
        e.update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, nid: str, value: float, total: float) -> None:
        e = self._entry(nid)
        e.update(state="running", value=value, max=total)
        self._send()

    def finish(self, nid: str) -> None:
        e = self._entry(nid)
        e.update(state="finished", value=e["max"])
        self._send()


# ------------------------------------------------------------------ one node's runtime

@dataclass
class RunContext:
    """What a node sees while it runs (nodes.NodeRuntime)."""

    executor: "Executor"
    node_id: str
    prompt_id: str
    folders: Folders
    prompt: dict
    extra_data: dict
    work_share: float = 0.0  # fraction of the prompt's exec time this node spends

    @property
    def output_dir(self):
        return self.folders.output

    @property
    def input_dir(self):
        return self.folders.input

    @property
    def temp_dir(self):
        return self.folders.temp

    def check_interrupt(self) -> None:
        if self.executor.interrupt.is_set():
            raise InterruptProcessing("Processing interrupted")

    async def work(self, share: float = 1.0) -> None:
        """Spend this node's part of exec_ms. Not interruptible, like a CUDA kernel: an
        interrupt is seen at the next checkpoint (node start, sampler step)."""
        seconds = self.executor.budget_s * self.work_share * share
        if seconds > 0:
            await asyncio.sleep(seconds)

    def previews_enabled(self) -> bool:
        return self.executor.double.previews

    async def progress(self, value: int, total: int, preview: tuple[str, im.ImageSpec] | None = None,
                       force_preview: bool = False) -> None:
        ex = self.executor
        d = ex.double
        self.check_interrupt()
        if preview is not None and not (force_preview or d.previews):
            preview = None
        ex.progress.update(self.node_id, value, total)
        wants_meta = d.client_supports_metadata(d.client_id)
        if preview is not None and wants_meta:
            fmt, spec = preview
            meta = {"node_id": self.node_id, "prompt_id": self.prompt_id, "display_node_id": self.node_id,
                    "parent_node_id": None, "real_node_id": self.node_id,
                    "image_type": "image/png" if fmt == "PNG" else "image/jpeg"}
            blob = await asyncio.to_thread(im.encode, spec, fmt, quality=95, compress_level=1)
            mj = json.dumps(meta).encode()
            d.send_sync(4, len(mj).to_bytes(4, "big") + mj + blob, d.client_id)
        d.send_sync("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id}, d.client_id)
        if preview is not None and not wants_meta:
            fmt, spec = preview
            blob = await asyncio.to_thread(im.encode, spec, fmt, quality=95, compress_level=1)
            d.send_sync(1, (1 if fmt == "JPEG" else 2).to_bytes(4, "big") + blob, d.client_id)


# ------------------------------------------------------------------ executor

class Executor:
    """PromptExecutor: caches live across prompts; one prompt at a time."""

    def __init__(self, double: "ComfyDouble"):
        self.double = double
        self.interrupt = asyncio.Event()
        self.release = asyncio.Event()
        self.outputs_cache: dict[str, tuple] = {}   # signature -> outputs
        self.ui_cache: dict[tuple[str, str], dict] = {}  # (node_id, class_type) -> {"meta", "output"}
        self.status_messages: list = []
        self.success = True
        self.history_result: dict = {}
        self.budget_s = 0.0
        self.progress: Progress | None = None

    def reset(self) -> None:
        self.outputs_cache.clear()
        self.ui_cache.clear()

    @property
    def library(self) -> dict[str, NodeDef]:
        return self.double.library

    def add_message(self, event: str, data: dict, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append([event, data])
        if self.double.client_id is not None or broadcast:
            self.double.send_sync(event, data, self.double.client_id)

    def _signatures(self, prompt: dict) -> dict[str, str]:
        memo: dict[str, str] = {}
        folders = self.double.folders

        def sig(nid: str, stack: tuple = ()) -> str:
            if nid in memo:
                return memo[nid]
            if nid in stack or nid not in prompt:
                return f"nan-{uuid.uuid4().hex}"
            node = prompt[nid]
            ndef = self.library[node["class_type"]]
            changed = None
            if ndef.is_changed is not None:
                try:
                    changed = ndef.is_changed(folders, node["inputs"])
                except Exception:
                    changed = f"nan-{uuid.uuid4().hex}"
            parts = []
            for key in sorted(node["inputs"]):
                v = node["inputs"][key]
                parts.append([key, ["LINK", sig(v[0], stack + (nid,)), v[1]] if is_link(v) else v])
            memo[nid] = json.dumps([node["class_type"], repr(changed), parts], sort_keys=True, default=repr)
            return memo[nid]

        for nid in prompt:
            sig(nid)
        return memo

    def _pick_work_nodes(self, prompt: dict, to_run: list[str]) -> dict[str, float]:
        samplers = [n for n in to_run if self.library[prompt[n]["class_type"]].sampler]
        if samplers:
            return {n: 1.0 / len(samplers) for n in samplers}
        if not to_run:
            return {}
        non_out = [n for n in prompt if n in to_run and not self.library[prompt[n]["class_type"]].output_node]
        return {(non_out or [n for n in prompt if n in to_run])[0]: 1.0}

    def _inputs(self, prompt: dict, nid: str, sigs: dict[str, str]) -> dict:
        node = prompt[nid]
        ndef = self.library[node["class_type"]]
        spec = ndef.input_types(self.double.folders)
        names = list(spec.get("required", {})) + list(spec.get("optional", {}))
        out = {}
        for name in names:
            if name not in node["inputs"]:
                continue
            v = node["inputs"][name]
            if is_link(v):
                cached = self.outputs_cache.get(sigs[v[0]])
                out[name] = cached[v[1]] if cached is not None and v[1] < len(cached) else None
            else:
                out[name] = v
        return out

    async def execute(self, item: QueueItem) -> None:
        d = self.double
        prompt, prompt_id, extra_data = item.prompt, item.prompt_id, item.extra_data
        self.interrupt.clear()
        d.client_id = extra_data.get("client_id")
        self.status_messages = []
        self.success = True
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        self.progress = Progress(d, prompt_id)
        sigs = self._signatures(prompt)
        live_sigs = set(sigs.values())
        for k in [k for k in self.outputs_cache if k not in live_sigs]:
            del self.outputs_cache[k]
        live_ids = {(nid, n["class_type"]) for nid, n in prompt.items()}
        for k in [k for k in self.ui_cache if k not in live_ids]:
            del self.ui_cache[k]

        def cached(nid: str) -> bool:
            return sigs[nid] in self.outputs_cache

        cached_nodes = [nid for nid in prompt if cached(nid)]
        self.add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)
        elist = ExecutionList(prompt, cached, lambda n: self.library[prompt[n]["class_type"]].output_node)
        for o in item.outputs:
            elist.add_node(o)
        to_run = [n for n in elist.pending if not cached(n)]
        work_nodes = self._pick_work_nodes(prompt, to_run)
        self.budget_s = max(0.0, d.exec_ms) / 1000.0
        hang = d.faults.hang_prompts > 0 and bool(to_run)
        if hang:
            d.faults.hang_prompts -= 1
            self.release.clear()
        close_ws = d.faults.close_ws_prompts > 0 and bool(to_run)
        if close_ws:
            d.faults.close_ws_prompts -= 1
        fault: ExecError | None = None
        if d.faults.exec_errors and to_run:
            f0 = d.faults.exec_errors[0]
            if any(f0.node_id == n or f0.class_type == prompt[n]["class_type"] for n in to_run) or (
                    f0.node_id is None and f0.class_type is None):
                fault = d.faults.exec_errors.pop(0)
        current_outputs = list(prompt)
        executed: list[str] = []
        first = True
        ran_any = False
        while not elist.empty():
            nid = elist.stage()
            node = prompt[nid]
            class_type = node["class_type"]
            ndef = self.library[class_type]
            if cached(nid):
                if d.client_id is not None:
                    ui = self.ui_cache.get((nid, class_type)) or {}
                    d.send_sync("executed", {"node": nid, "display_node": nid, "output": ui.get("output"),
                                             "prompt_id": prompt_id}, d.client_id)
                self.progress.finish(nid)
                elist.complete(nid)
                continue
            self.progress.start(nid)
            inputs = self._inputs(prompt, nid, sigs)
            if d.client_id is not None:
                d.last_node_id = nid
                d.send_sync("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id}, d.client_id)
            rt = RunContext(self, nid, prompt_id, d.folders, prompt, extra_data, work_nodes.get(nid, 0.0))
            try:
                rt.check_interrupt()
                if first:
                    first = False
                    if close_ws:
                        await d.flush()
                        await d.close_websockets()
                if fault is not None and (fault.node_id == nid or fault.class_type == class_type
                                          or (fault.node_id is None and fault.class_type is None)):
                    fault_ = fault
                    fault = None
                    raise _exception_class(fault_.exception_type)(fault_.message)
                if hang:
                    hang = False
                    await self._hang()
                    # a hung node that is the last to run has no later checkpoint: report it
                    if self.interrupt.is_set() and len(elist.pending) == 1:
                        rt.check_interrupt()
                if not ndef.sampler and nid in work_nodes:
                    await rt.work(1.0)
                result: NodeResult = await ndef.run(rt, inputs)
                ran_any = True
            except InterruptProcessing:
                self.success = False
                self.add_message("execution_interrupted", {"prompt_id": prompt_id, "node_id": nid, "node_type": class_type,
                                                           "executed": list(executed)}, broadcast=True)
                break
            except Exception as ex:
                self.success = False
                tips = OOM_TIPS if full_type_name(type(ex)) in ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError") else ""
                self.add_message("execution_error", {
                    "prompt_id": prompt_id, "node_id": nid, "node_type": class_type, "executed": list(executed),
                    "exception_message": "{}\n{}".format(ex, tips), "exception_type": full_type_name(type(ex)),
                    "traceback": traceback.format_tb(ex.__traceback__),
                    "current_inputs": {k: [format_value(v)] for k, v in inputs.items()},
                    "current_outputs": list(current_outputs),
                }, broadcast=False)
                break
            if result.ui:
                self.ui_cache[(nid, class_type)] = {
                    "meta": {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid},
                    "output": result.ui,
                }
                if d.client_id is not None:
                    d.send_sync("executed", {"node": nid, "display_node": nid, "output": result.ui,
                                             "prompt_id": prompt_id}, d.client_id)
            self.outputs_cache[sigs[nid]] = tuple(result.outputs)
            self.progress.finish(nid)
            executed.append(nid)
            d.nodes_executed += 1
            elist.complete(nid)
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        outputs, meta = {}, {}
        for nid, node in prompt.items():
            ui = self.ui_cache.get((nid, node["class_type"]))
            if ui is not None:
                outputs[nid] = ui["output"]
                meta[nid] = ui["meta"]
        self.history_result = {"outputs": outputs, "meta": meta}
        d.last_node_id = None
        if ran_any:
            d.prompts_executed += 1

    async def _hang(self) -> None:
        """Block like a wedged CUDA kernel: only an interrupt or release() ends it."""
        waiters = [asyncio.ensure_future(self.interrupt.wait()), asyncio.ensure_future(self.release.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
