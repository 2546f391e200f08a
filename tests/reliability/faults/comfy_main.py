"""The ComfyUI double as a *process* the supervisor can launch, kill and restart, with
its faults still scriptable from the test: a ComfyUI-shaped `main.py` imports this.

    python main.py --listen H --port P --disable-auto-launch [--cpu]

Beside ComfyUI's port it serves a control port (written to `<root>/control.port`, the
pid to `<root>/pid`): `POST /fault {"call": "hang_next_prompt", "kwargs": {...}}` calls
one of the double's fault methods (or `freeze_next_prompt`: SIGSTOP this process once the
next prompt runs), `GET /state` reports what it saw (prompts finished,
interrupts, /free calls). A file `<root>/crash` makes it exit at start like a ComfyUI
that cannot boot (for the "K crashes" fault).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

# Fault methods of ComfyDouble the test may call remotely.
_CALLS = {"fail_next_prompt", "hang_next_prompt", "release", "close_websockets_mid_prompt",
          "slow_history", "fail_uploads", "fail_http", "reset_faults"}

MAIN_PY = """import sys
sys.path.insert(0, {repo!r})
from tests.reliability.faults.comfy_main import main
sys.exit(main(sys.argv[1:], root={root!r}, exec_ms={exec_ms!r}, models={models!r}))
"""


def write_main(root: Path, repo: Path, exec_ms: float = 30.0, models: dict[str, list[str]] | None = None) -> Path:
    """Make `root` look like a ComfyUI install whose main.py runs the double."""
    root.mkdir(parents=True, exist_ok=True)
    main_py = root / "main.py"
    main_py.write_text(MAIN_PY.format(repo=str(repo), root=str(root), exec_ms=exec_ms, models=models or {}))
    return main_py


async def _serve(host: str, port: int, root: Path, exec_ms: float, models: dict[str, list[str]]) -> None:
    from tests.comfy_double import ComfyDouble

    double = ComfyDouble(root=root, exec_ms=exec_ms, models=models)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM keeps its default (the process ends at once), as with a real ComfyUI.
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def freeze_when_running() -> None:
        # A frozen process (a hung driver, a livelocked interpreter): its port still accepts
        # connections but nothing answers. Freezing from inside, right after the prompt's
        # first events are on the wire, makes the moment exact.
        while double.faults.hang_prompts > 0:  # taken when the prompt starts running
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # its execution_start and first `executing` are queued...
        await double.flush()      # ...and written to the socket
        os.kill(os.getpid(), signal.SIGSTOP)

    async def fault(request: web.Request) -> web.Response:
        body = await request.json()
        call = body.get("call")
        if call == "freeze_next_prompt":
            double.hang_next_prompt()
            asyncio.ensure_future(freeze_when_running())
            return web.json_response({"ok": True})
        if call not in _CALLS:
            return web.json_response({"error": f"unknown call {call!r}"}, status=400)
        getattr(double, call)(**(body.get("kwargs") or {}))
        return web.json_response({"ok": True})

    async def state(request: web.Request) -> web.Response:
        return web.json_response({
            "pid": os.getpid(),
            "prompts_finished": double.prompts_finished,
            "prompts_executed": double.prompts_executed,
            "interrupts": len(double.requests_to("/interrupt", "POST")),
            "queue_deletes": len(double.requests_to("/queue", "POST")),
            "frees": len(double.requests_to("/free", "POST")),
            "prompts_posted": len(double.requests_to("/prompt", "POST")),
            "queue_remaining": double.queue.remaining() if double.queue else 0,
        })

    control = web.Application()
    control.router.add_post("/fault", fault)
    control.router.add_get("/state", state)
    control_runner = web.AppRunner(control, access_log=None, handle_signals=False)
    await control_runner.setup()
    site = web.TCPSite(control_runner, "127.0.0.1", 0)
    await site.start()
    control_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    await double.start(host, port)
    (root / "control.port").write_text(str(control_port))
    (root / "pid").write_text(str(os.getpid()))
    print("Starting server\n", flush=True)
    print(f"To see the GUI go to: {double.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await double.close()
        await control_runner.cleanup()


def main(argv: list[str], *, root: str, exec_ms: float = 30.0, models: dict[str, list[str]] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    args, _ = p.parse_known_args(argv)  # --disable-auto-launch, --cpu: nothing to do
    here = Path(root)
    if (here / "crash").exists():
        print("Traceback (most recent call last):\nRuntimeError: ComfyUI cannot start (injected crash)",
              file=sys.stderr, flush=True)
        return 1
    asyncio.run(_serve(args.listen, args.port, here, exec_ms, models or {}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=json.loads(os.environ.get("COMFY_ROOT", '"."'))))
