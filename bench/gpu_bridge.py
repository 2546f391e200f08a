"""Run the bridge app (build_app) for bench/gpu_check.sh, with inline delivery and workload units.

Why not `comfy-worker bridge`: its default destination picker imports the S3 module (and
so boto3/botocore, about 15 MB of wheels) on every request, and the GPU machine has no
boto3 and a 64 MiB limit on what travels. Inline-only delivery here is the same code path
`comfy-worker bridge` takes for an inline request once boto3 is importable. The worker's
workload model is passed as workload_fn, as the PyWorker does, so responses carry units.

    python bench/gpu_bridge.py --comfyui-url http://127.0.0.1:8188 --comfyui-path DIR --port 18288
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.app import build_app
from comfy_bridge.delivery.inline import InlineDestination
from comfy_bridge.settings import BridgeSettings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui-url", required=True)
    p.add_argument("--comfyui-path", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18288)
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args()
    logs.setup(a.log_level)
    settings = BridgeSettings(
        comfyui_url=a.comfyui_url, comfyui_path=a.comfyui_path, host=a.host, port=a.port
    )
    try:
        from worker.workload import WorkloadModel

        workload_fn = WorkloadModel().graph_units
    except ImportError:
        workload_fn = None
    app = build_app(
        settings,
        destinations=lambda job, s: InlineDestination(s),
        workload_fn=workload_fn,
    )
    web.run_app(app, host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
