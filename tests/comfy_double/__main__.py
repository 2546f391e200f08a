"""`python -m tests.comfy_double --port N [--exec-ms T] [--root DIR] [--host H]`: serve
until SIGTERM/SIGINT, printing ComfyUI's ready line once the port is bound."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from .gc_pause import GcPause
from .server import ComfyDouble


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.comfy_double", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--listen", dest="host", help="alias of --host, as ComfyUI spells it")
    p.add_argument("--port", type=int, default=8188, help="0: pick a free port")
    p.add_argument("--exec-ms", type=float, default=0.0, help="execution time per prompt that runs anything")
    p.add_argument("--root", type=Path, default=None, help="holds output/ input/ temp/ models/ (default: a temp dir)")
    p.add_argument("--history-lag-s", type=float, default=0.0)
    p.add_argument("--models", default=None, help='JSON {"checkpoints": ["a.safetensors"]} of model files to create')
    p.add_argument("--no-previews", action="store_true", help="no binary preview frames from samplers")
    p.add_argument("--gc-objects", type=int, default=0,
                   help="live objects ComfyUI's gc.collect() walks after prompts (~500000: its 10-second pause)")
    p.add_argument("--gc-interval-s", type=float, default=10.0)
    p.add_argument("--extra-model-paths-config", type=Path, action="append", default=[],
                   help="as ComfyUI: packs in its custom_nodes: folders are imported last")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as ComfyUI logs its packs' lines
    double = ComfyDouble(root=args.root, exec_ms=args.exec_ms, models=json.loads(args.models) if args.models else None,
                         history_lag_s=args.history_lag_s, previews=not args.no_previews,
                         gc_pause=GcPause(args.gc_objects, args.gc_interval_s),
                         extra_model_paths=args.extra_model_paths_config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await double.start(args.host, args.port)
    print("Starting server\n", flush=True)
    print(f"To see the GUI go to: {double.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await double.close()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
