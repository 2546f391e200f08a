"""`comfy-worker bridge`: run the bridge's HTTP app in front of any ComfyUI.

    comfy-worker bridge --comfyui-url http://127.0.0.1:8188 [--comfyui-path DIR]
                        [--host 127.0.0.1] [--port 18288] [--log-level INFO]

Flags override the COMFY_BRIDGE_* environment (see comfy_bridge/settings.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from comfy_bridge import logs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--comfyui-url", help="ComfyUI's base URL (default: COMFY_BRIDGE_COMFYUI_URL or http://127.0.0.1:18188)")
    p.add_argument("--comfyui-path", type=Path,
                   help="ComfyUI's folder; outputs are then read from its output/ instead of /view")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 18288)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    import asyncio

    from comfy_bridge.app import RUNNER_KEY, build_app
    from comfy_bridge.settings import BridgeSettings
    from comfy_bridge.shutdown import GracefulShutdown, serve

    logs.setup(args.log_level)
    overrides = {k: v for k, v in {
        "comfyui_url": args.comfyui_url,
        "comfyui_path": args.comfyui_path,
        "host": args.host,
        "port": args.port,
    }.items() if v is not None}
    settings = BridgeSettings(**overrides)
    log = logs.get("comfy_bridge")
    log.info("bridge listening on http://%s:%d for ComfyUI at %s", settings.host, settings.port, settings.comfyui_url)

    async def main() -> int:
        # SIGTERM: new requests get 503 shutting_down, running ones get shutdown_grace_s
        # to finish, then the app's cleanup closes the ComfyUI client; exit 0.
        shutdown = GracefulShutdown(grace_s=settings.shutdown_grace_s)
        app = build_app(settings)
        shutdown.add_drain(app[RUNNER_KEY].drain, "bridge background work")  # callers who left, webhooks
        return await serve(
            app, shutdown, host=settings.host, port=settings.port,
            handler_cancellation=True,  # a caller that leaves frees its prompt (see api_router)
        )

    return asyncio.run(main())
