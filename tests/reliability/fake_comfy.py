"""A tiny stand-in for ComfyUI's process, for supervisor tests: it takes ComfyUI's
command-line flags, serves GET /system_stats, and can be told to crash, exit or hang.

Run as `python fake_comfy.py --listen H --port P --disable-auto-launch [--cpu] [fault flags]`.
Fault flags: --exit-at-start CODE, --hang-at-start, --startup-delay S, --print-log FILE,
--spew-lines N, --spawn-grandchild PIDFILE, --ignore-sigterm.
HTTP faults: POST /fault/exit?code=N (exits right after answering), POST /fault/hang
(/system_stats stops answering; the process stays alive).
Stdlib only, so it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HUNG = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:  # keep the log readable
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/system_stats":
            if HUNG.is_set():
                time.sleep(3600)
            self._json(200, {"system": {"os": "posix", "comfyui_version": "fake"}, "devices": []})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/fault/exit":
            code = int(parse_qs(url.query).get("code", ["1"])[0])
            self._json(200, {"exiting": code})
            print(f"fake-comfy: told to exit with {code}", flush=True)
            os._exit(code)
        if url.path == "/fault/hang":
            HUNG.set()
            self._json(200, {"hung": True})
            return
        self._json(404, {"error": "not found"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--disable-auto-launch", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--exit-at-start", type=int)
    p.add_argument("--hang-at-start", action="store_true")
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--print-log")
    p.add_argument("--spew-lines", type=int, default=0)
    p.add_argument("--spawn-grandchild")
    p.add_argument("--ignore-sigterm", action="store_true")
    args, unknown = p.parse_known_args()

    print(f"fake-comfy argv: {' '.join(sys.argv[1:])}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(args.spawn_grandchild, "w") as fh:
            fh.write(str(child.pid))
    if args.print_log:
        with open(args.print_log) as fh:
            sys.stdout.write(fh.read())
        sys.stdout.flush()
    for i in range(args.spew_lines):
        print(f"progress line {i:06d} " + "x" * 60)
    sys.stdout.flush()
    if args.exit_at_start is not None:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "main.py", line 1, in <module>', file=sys.stderr)
        print("RuntimeError: fake ComfyUI cannot start", file=sys.stderr, flush=True)
        sys.exit(args.exit_at_start)
    if args.hang_at_start:
        while True:
            time.sleep(3600)
    time.sleep(args.startup_delay)
    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    print("Starting server", flush=True)
    print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
