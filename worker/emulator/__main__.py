"""`python -m worker.emulator [--host H] [--port N] [--endpoint NAME] [--api-key KEY]`.

Runs the router emulator alone, for a worker started elsewhere with
REPORT_ADDR=<the printed URL>.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from comfy_bridge import logs
from worker.emulator.router import RouterEmulator


async def _main(args: argparse.Namespace) -> None:
    emu = RouterEmulator(endpoint=args.endpoint, api_key=args.api_key)
    url = await emu.start(args.host, args.port)
    print(f"router emulator: {url} (endpoint {args.endpoint!r}, api key {args.api_key!r})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emu.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m worker.emulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--endpoint", default="local")
    p.add_argument("--api-key", default="local")
    args = p.parse_args()
    logs.setup()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
