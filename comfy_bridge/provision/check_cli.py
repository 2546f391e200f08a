"""`comfy-worker check-workflow FILE.json --comfyui-url URL`: will this workflow run there?

Checks a workflow (API format, UI format, or a request body wrapping one) against a
running ComfyUI's /object_info and names each problem: node classes not installed (with
the pack that provides them, from the manifest, its commented examples or a known map),
model files ComfyUI cannot see, values outside their allowed lists or ranges, missing
inputs and broken links. Exit 0: fine; 1: problems; 2: unreadable file or ComfyUI down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from comfy_bridge.errors import BridgeError
from comfy_bridge.provision import verify
from comfy_bridge.provision.manifest import DEFAULT_MANIFEST, Manifest, load_manifest

_LABEL = {"missing_class": "missing class", "missing_model": "missing model", "invalid_value": "invalid value",
          "missing_input": "missing input", "bad_link": "bad link"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", type=Path, help="the workflow JSON file")
    p.add_argument("--comfyui-url", default=os.environ.get("COMFY_BRIDGE_COMFYUI_URL", "http://127.0.0.1:18188"),
                   help="the running ComfyUI (default: COMFY_BRIDGE_COMFYUI_URL or http://127.0.0.1:18188)")
    p.add_argument("--manifest", type=Path, default=Path(os.environ.get("COMFY_WORKER_MANIFEST", DEFAULT_MANIFEST)),
                   help="manifest whose packs (and commented examples) name the pack of a missing class")
    p.add_argument("--json", action="store_true", help="print the problems as JSON")


async def check(workflow: Path, comfyui_url: str, manifest: Manifest | None) -> tuple[verify.WorkflowShape,
                                                                                         list[verify.Problem]]:
    shape = verify.load_workflow_file(workflow)
    info = await verify.fetch_object_info(comfyui_url)
    packs = verify.PackIndex(manifest)
    if shape.api is not None:
        return shape, verify.check_graph(shape.api, info, packs, manifest)
    return shape, verify.check_classes(shape.class_types, info, packs)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.manifest) if args.manifest.exists() else None
    except BridgeError as exc:
        print(f"warning: manifest ignored: {exc.message}", file=sys.stderr)
        manifest = None
    try:
        shape, problems = asyncio.run(check(args.workflow, args.comfyui_url, manifest))
    except (OSError, ValueError) as exc:
        print(f"{args.workflow}: cannot read the workflow: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"{args.workflow}: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"workflow": str(args.workflow), "ok": not problems, "ui_format": shape.ui_format,
                          "problems": [p.model_dump(exclude_none=True) for p in problems]}, indent=1))
        return 1 if problems else 0
    name = args.workflow.name
    if shape.ui_format:
        print(f"{name}: UI-format workflow: node classes checked only (export it with 'Save (API)' to check "
              "models and values too)")
    if not problems:
        print(f"{name}: OK against ComfyUI at {args.comfyui_url} ({len(shape.class_types)} node classes)")
        return 0
    print(f"{name}: {len(problems)} problem(s) against ComfyUI at {args.comfyui_url}")
    for p in problems:
        print(f"  {_LABEL[p.kind]:<14} {p.message}")
    packs = sorted({(p.pack, p.repo) for p in problems if p.kind == "missing_class" and p.pack})
    if packs:
        print("packs to add to the manifest ([[custom_nodes]] with name, repo, ref = a commit, provides):")
        for pack, repo in packs:
            print(f"  {pack}: {repo or '(repo in the manifest)'}")
    return 1
