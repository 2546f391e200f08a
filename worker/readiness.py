"""Is this worker able to serve? Asked of ComfyUI itself, not read from its log lines.

Ready means: the bridge answers /ready (so ComfyUI answers HTTP); every node class the
benchmark workflow and COMFY_WORKER_REQUIRED_NODES name is installed; every choice the
benchmark graph makes from a list (sampler names, model files...) is offered by this
ComfyUI; every model in COMFY_WORKER_REQUIRED_MODELS is on disk. A custom node pack that
failed to import does not stop ComfyUI, and its samplers silently vanish from KSampler's
lists, so checking the install is not enough (FACTS.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

import aiohttp

from comfy_bridge import logs
from comfy_bridge.errors import ComfyUnavailable, MissingModels, MissingNodeClasses, WorkflowRejected

log = logs.get(__name__)


async def wait_answering(session: aiohttp.ClientSession, ready_url: str, timeout_s: float) -> None:
    """Poll `ready_url` until it answers 200 or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    last = "no answer yet"
    while True:
        try:
            async with session.get(ready_url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() + delay > deadline:
            raise ComfyUnavailable(
                f"ComfyUI did not become ready within {timeout_s:.0f} s ({ready_url}: {last})"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _options(spec: Any) -> list[Any] | None:
    """The allowed values of a combo input spec, old (`[[...], {...}]`) or new (`COMBO`)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        opts = spec[1].get("options")
        return opts if isinstance(opts, list) else None
    return None


def check_graph(
    object_info: dict[str, Any],
    graph: dict[str, Any] | None,
    required_nodes: Iterable[str] = (),
    staged_names: Iterable[str] = (),
) -> None:
    """Raise if a node class is missing or a literal choice is not offered."""
    graph = graph or {}
    wanted = set(required_nodes) | {
        str(n.get("class_type")) for n in graph.values() if isinstance(n, dict) and n.get("class_type")
    }
    missing = sorted(wanted - set(object_info))
    if missing:
        raise MissingNodeClasses(
            f"node classes not installed in this ComfyUI: {', '.join(missing)} "
            "(a custom node pack is missing or failed to import; see ComfyUI's log)",
            classes=missing,
        )
    staged = set(staged_names)
    problems: list[dict[str, Any]] = []
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            continue
        info = object_info.get(str(node.get("class_type")), {})
        specs: dict[str, Any] = {}
        for section in ("required", "optional"):
            part = (info.get("input") or {}).get(section) or {}
            if isinstance(part, dict):
                specs.update(part)
        for name, value in (node.get("inputs") or {}).items():
            if not isinstance(value, str) or value in staged:
                continue
            opts = _options(specs.get(name))
            if opts is not None and value not in opts:
                problems.append(
                    {"node_id": str(node_id), "class_type": node.get("class_type"), "input": name, "value": value}
                )
    if problems:
        text = "; ".join(f"{p['value']!r} for {p['input']} of node {p['node_id']} ({p['class_type']})" for p in problems)
        model_like = [p for p in problems if p["input"].endswith("_name") and p["input"] != "sampler_name"]
        cls = MissingModels if model_like and len(model_like) == len(problems) else WorkflowRejected
        raise cls(f"this ComfyUI does not offer what the benchmark workflow needs: {text}", problems=problems)


async def check_models(
    session: aiohttp.ClientSession, comfyui_url: str, required: Iterable[str], object_info: dict[str, Any]
) -> None:
    """Raise MissingModels for any `folder/file` not listed by ComfyUI's GET /models/{folder}."""
    missing: list[str] = []
    offered: set[str] | None = None
    for entry in required:
        folder, _, name = entry.strip().strip("/").partition("/")
        if not name:
            folder, name = "", folder
        files: list[Any] | None = None
        if folder:
            try:
                async with session.get(f"{comfyui_url}/models/{folder}", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    if r.status == 200:
                        files = await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                files = None
        if isinstance(files, list):
            if name not in files:
                missing.append(entry)
            continue
        if offered is None:  # no /models route: any combo of any node offering the file
            offered = set()
            for info in object_info.values():
                for section in ("required", "optional"):
                    for spec in ((info.get("input") or {}).get(section) or {}).values():
                        offered.update(str(o) for o in (_options(spec) or []))
        if name not in offered:
            missing.append(entry)
    if missing:
        raise MissingModels(
            f"model files not found by ComfyUI: {', '.join(missing)} (add them to models_manifest.toml)",
            models=missing,
        )


async def check_ready(
    session: aiohttp.ClientSession,
    *,
    ready_url: str,
    comfyui_url: str,
    graph: dict[str, Any] | None,
    required_nodes: Iterable[str],
    required_models: Iterable[str],
    staged_names: Iterable[str] = (),
    timeout_s: float,
) -> None:
    """Wait until ComfyUI answers, then raise if what the worker needs is missing."""
    await wait_answering(session, ready_url, timeout_s)
    async with session.get(f"{comfyui_url}/object_info", timeout=aiohttp.ClientTimeout(total=120)) as r:
        if r.status != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {r.status} to GET /object_info")
        object_info = await r.json(content_type=None)
    check_graph(object_info, graph, required_nodes, staged_names)
    required_models = list(required_models)
    if required_models:
        await check_models(session, comfyui_url, required_models, object_info)
    log.info("ComfyUI ready", extra={"fields": {"node_classes": len(object_info)}})
