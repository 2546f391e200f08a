"""`python -m worker.emulator [--host H] [--port N] [--api-key KEY] [--comfyui-url URL]
[--deploy-file deploy.toml [--env E]] [--endpoint NAME]`.

Runs the local Vast: the router emulator (router.py) and the control plane beside it
(control_plane.py), on one port. Point `comfy-worker deploy --vast-url` and
`--autoscaler-url` at the printed URL (with VAST_API_KEY set to --api-key); with
--comfyui-url, each workergroup created starts a local worker against that ComfyUI.
A worker started elsewhere can report to it too (REPORT_ADDR=<the printed URL>), under
--endpoint, whose name defaults to the deploy file's endpoint when one is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from comfy_bridge import logs
from worker.emulator.control_plane import ControlPlane


async def _main(args: argparse.Namespace) -> None:
    endpoint = args.endpoint
    if args.deploy_file and not endpoint:
        from worker.deploy.config import load

        endpoint = load(args.deploy_file, env_name=args.env, strict=False).config.endpoint_name
    emu = ControlPlane(endpoint=endpoint or "local", api_key=args.api_key, comfyui_url=args.comfyui_url)
    url = await emu.start(args.host, args.port)
    print(f"local Vast (router + control plane): {url} (endpoint {emu.endpoint!r}, api key {args.api_key!r})",
          flush=True)
    if args.comfyui_url:
        print(f"workergroups start local workers against ComfyUI at {args.comfyui_url}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop the local workers it started, too
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m worker.emulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--endpoint", default=None, help="endpoint name for workers started elsewhere (default: local)")
    p.add_argument("--api-key", default="local")
    p.add_argument("--comfyui-url", help="ComfyUI the workers a workergroup starts use (none: no workers start)")
    p.add_argument("--deploy-file", type=Path, help="deploy.toml: the endpoint name and settings")
    p.add_argument("--env", help="with --deploy-file: the [env.NAME] overlay")
    args = p.parse_args()
    logs.setup()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
