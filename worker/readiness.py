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
from pathlib import Path
from typing import Any, Iterable

import aiohttp

from comfy_bridge import logs
from comfy_bridge.errors import ComfyUnavailable, MissingModels, MissingNodeClasses, WorkflowRejected
from comfy_bridge.provision import verify

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


def check_graph(
    object_info: dict[str, Any],
    graph: dict[str, Any] | None,
    required_nodes: Iterable[str] = (),
    staged_names: Iterable[str] = (),
) -> None:
    """Raise if a node class is missing or a value is not offered (provision.verify decides).

    Missing classes come first (MissingNodeClasses, with the pack that provides each when
    known); then model files (MissingModels); then anything else ComfyUI would reject.
    """
    graph = graph or {}
    staged = set(staged_names)
    packs = verify.PackIndex()
    missing = sorted(
        set(required_nodes) - set(object_info)
        | {str(n.get("class_type")) for n in graph.values() if isinstance(n, dict)} - set(object_info)
    )
    if missing:
        hints = "; ".join(f"{c}: {verify.describe_hint(packs.for_class(c))}" for c in missing)
        raise MissingNodeClasses(
            f"node classes not installed in this ComfyUI: {', '.join(missing)} ({hints})",
            classes=missing,
        )
    problems = [
        p for p in verify.check_graph(graph, object_info, packs)
        if not (p.node_id and p.input and graph[p.node_id]["inputs"].get(p.input) in staged)
    ]
    if not problems:
        return
    text = "; ".join(p.message for p in problems)
    details = {"problems": [p.model_dump(exclude_none=True) for p in problems]}
    if all(p.kind == "missing_model" for p in problems):
        raise MissingModels(f"this ComfyUI lacks model files the benchmark workflow needs: {text}", **details)
    raise WorkflowRejected(f"this ComfyUI does not offer what the benchmark workflow needs: {text}", **details)


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
                        offered.update(str(o) for o in (verify.combo_options(spec) or []))
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
    workflows_dir: Path | None = None,
) -> None:
    """Wait until ComfyUI answers, then raise if what the worker needs is missing."""
    await wait_answering(session, ready_url, timeout_s)
    async with session.get(f"{comfyui_url}/object_info", timeout=aiohttp.ClientTimeout(total=120)) as r:
        if r.status != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {r.status} to GET /object_info")
        object_info = await r.json(content_type=None)
    # Every class the manifest's packs promise and the templates use: names the pack that
    # failed to import (its samplers silently vanish otherwise) before any request fails.
    verify.raise_if_incomplete(object_info, workflows_dir=workflows_dir)
    check_graph(object_info, graph, required_nodes, staged_names)
    required_models = list(required_models)
    if required_models:
        await check_models(session, comfyui_url, required_models, object_info)
    log.info("ComfyUI ready", extra={"fields": {"node_classes": len(object_info)}})
