"""`comfy-worker call`: send a workflow through a router to a worker and save the outputs.

    comfy-worker call WORKFLOW.json [--out DIR] [--router URL] [--endpoint NAME]
                      [--api-key KEY] [--deadline S] [--request-id ID] [--progress]

WORKFLOW.json is an API-format graph, a request `input` object, or a whole
`{"input": {...}}` payload. The router defaults to the local emulator that
`comfy-worker serve --local` starts (http://127.0.0.1:8081); give --router
https://run.vast.ai with your endpoint and API key (or VAST_API_KEY) to call Vast.
Inline outputs are decoded into --out, outputs with a URL are downloaded there; the
response (without the base64) is printed as JSON. Exit status: 0 success, 1 failure.
`--progress` calls the worker's /generate/stream and draws a live progress bar with the
node being run on stderr (only when stderr is a terminal; worker/progress_bar.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from comfy_bridge import logs

DEFAULT_LOCAL_ROUTER = "http://127.0.0.1:8081"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("workflow", type=Path, help="API-format graph, request input, or {\"input\": ...} payload (JSON)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the outputs (default ./outputs)")
    add_router_arguments(p)
    p.add_argument("--deadline", type=float, default=600.0, help="give up after this many seconds (default 600)")
    p.add_argument("--request-id", help="names the outputs; also makes a resend after a lost connection safe")
    p.add_argument("--progress", action="store_true",
                   help="stream the request and show a live progress bar on stderr (when it is a terminal)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def add_router_arguments(p: argparse.ArgumentParser) -> None:
    """--router, --endpoint, --api-key: how to reach an endpoint (also `comfy-worker mcp`)."""
    p.add_argument("--router", default=os.environ.get("COMFY_WORKER_ROUTER_URL", DEFAULT_LOCAL_ROUTER),
                   help=f"router URL (default COMFY_WORKER_ROUTER_URL or {DEFAULT_LOCAL_ROUTER})")
    p.add_argument("--endpoint", default=os.environ.get("COMFY_WORKER_ENDPOINT", "local"),
                   help="endpoint name (default COMFY_WORKER_ENDPOINT or 'local')")
    p.add_argument("--api-key", default=os.environ.get("VAST_API_KEY", "local"),
                   help="API key (default VAST_API_KEY or 'local')")


def load_job(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} must hold a JSON object")
    if isinstance(data.get("input"), dict):
        return dict(data["input"])
    if any(k in data for k in ("workflow_json", "workflow", "modifier")):
        return dict(data)
    return {"workflow_json": data}


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    try:
        job = load_job(args.workflow)
    except (OSError, ValueError) as e:
        print(f"comfy-worker call: cannot read {args.workflow}: {e}", file=sys.stderr)
        return 2
    if args.request_id:
        job["request_id"] = args.request_id
    return asyncio.run(_call(args, job))


async def _call(args: argparse.Namespace, job: dict[str, Any]) -> int:
    import aiohttp

    from comfy_bridge.errors import BridgeError
    from worker.client import CallError, WorkerClient

    async with WorkerClient(args.endpoint, args.api_key, router_url=args.router) as client:
        try:
            if args.progress:
                result = await _streamed(client, job, args.deadline)
            else:
                result = await client.generate(job, deadline_s=args.deadline)
        except BridgeError as e:
            body = getattr(e, "response", None)
            status = getattr(e, "http_status", e.status)
            print(json.dumps(body.model_dump(exclude_none=True) if body else {"error": e.to_dict()}, indent=2))
            print(f"comfy-worker call: failed (HTTP {status}, {e.type}): {e.message}", file=sys.stderr)
            return 1
        except CallError as e:
            print(f"comfy-worker call: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        saved: list[str] = []
        async with aiohttp.ClientSession() as http:
            for out in result.output:
                target = args.out / Path(out.filename).name
                if out.data is not None:
                    await asyncio.to_thread(target.write_bytes, base64.b64decode(out.data))
                elif out.url:
                    async with http.get(out.url) as r:
                        r.raise_for_status()
                        await asyncio.to_thread(target.write_bytes, await r.read())
                else:
                    continue
                saved.append(str(target))
        summary = result.model_dump(exclude_none=True)
        for item in summary.get("output", []):
            item.pop("data", None)
        print(json.dumps(summary, indent=2))
        for path in saved:
            print(f"saved {path}", file=sys.stderr)
        return 0


async def _streamed(client: Any, job: dict[str, Any], deadline_s: float) -> Any:
    """The result of client.stream(job), drawing each event on stderr as it arrives."""
    from worker.progress_bar import ProgressBar

    bar = ProgressBar(sys.stderr)
    result = None
    try:
        async with contextlib.aclosing(client.stream(job, deadline_s=deadline_s)) as events:
            async for event in events:
                bar.update(event)
                if event.event == "result":
                    result = event.response
    finally:
        bar.close()
    if result is None:
        raise RuntimeError("the stream ended without a result")  # stream() raises before this
    return result
