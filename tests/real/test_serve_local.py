"""`comfy-worker serve --local` launching a real ComfyUI, then `comfy-worker call` through it.

What a developer does on a laptop, end to end: the worker supervises ComfyUI as a child,
benchmarks (the weightless workflow, to keep start-up short), registers with the router
emulator, prints "ready:"; a call through the router saves a PNG; SIGTERM stops the
worker with status 0 and takes ComfyUI down with it.

ComfyUI's folders go under tmp_path through COMFY_BRIDGE_COMFYUI_EXTRA_ARGS (the flags
the supervisor appends to main.py), never into the install. A guard stands in for
ComfyUI's python and refuses to start it without those flags, so if they are dropped the
test fails saying so instead of writing into the shared install.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.real import graphs
from tests.real.launcher import Layout, comfy_python, ensure_checkpoints, free_port

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "workflows" / "benchmark_weightless.json"
READY_WITHIN_S = 600
GUARD_EXIT = 3


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("comfy-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]


def _guard(path: Path, python: str) -> str:
    path.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --output-directory "*) exec ' + shlex.quote(python) + ' "$@";; esac\n'
        'echo "python guard: ComfyUI started without --output-directory: '
        'COMFY_BRIDGE_COMFYUI_EXTRA_ARGS was not passed to it: $*" >&2\n'
        f"exit {GUARD_EXIT}\n"
    )
    path.chmod(0o755)
    return str(path)


def _comfyui_pids(port: int) -> list[int]:
    """Live processes running ComfyUI's main.py on `port` (ours: the port is unique to this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or b"main.py" not in argv:
            continue
        if b"--port" in argv and argv[argv.index(b"--port") + 1 :][:1] == [str(port).encode()]:
            found.append(int(entry.name))
    return found


class Lines:
    """A subprocess's stdout, line by line, read on a thread (waits without sleeping)."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for raw in stream:
            self._q.put(raw.decode(errors="replace").rstrip("\n"))
        self._q.put(None)

    def wait_for(self, prefix: str, timeout_s: float, fail_on: tuple[str, ...] = ()) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {prefix!r} line within {timeout_s:.0f}s: {self.seen[-15:]}")
            try:
                line = self._q.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stdout closed before a {prefix!r} line: {self.seen[-15:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line
            if line.startswith(fail_on):
                raise AssertionError(line)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    comfyui_path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    checkpoints = ensure_checkpoints(comfy_python(comfyui_path), comfyui_path, ["sd15"])
    return Layout(tmp_path / "comfy").create(checkpoints)


def test_serve_local_then_call_saves_a_png_and_sigterm_stops_everything(tmp_path: Path, layout: Layout) -> None:
    comfyui_path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    python = _guard(tmp_path / "comfyui-python", comfy_python(comfyui_path))
    port, router_port, comfy_port = free_port(), free_port(), free_port()
    router = f"http://127.0.0.1:{router_port}"
    env = dict(os.environ, COMFY_BRIDGE_COMFYUI_EXTRA_ARGS=shlex.join(layout.flags()), PYTHONUNBUFFERED="1")
    for private in ("COMFY_WORKER_BENCHMARK_WORKFLOW", "COMFY_WORKER_STATE_DIR"):
        env.pop(private, None)
    work = tmp_path / "cwd"
    work.mkdir()
    state = tmp_path / "state"
    stderr = open(tmp_path / "serve.stderr", "wb")
    argv = [*_cli(), "serve", "--local", "--comfyui-path", str(comfyui_path), "--comfyui-python", python,
            "--port", str(port), "--router-port", str(router_port), "--comfyui-port", str(comfy_port),
            "--benchmark-workflow", str(BENCHMARK), "--state-dir", str(state)]
    server = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=stderr, start_new_session=True)
    comfy_pids: list[int] = []
    try:
        lines = Lines(server.stdout)
        try:
            lines.wait_for("ready:", READY_WITHIN_S, fail_on=("the worker errored", "comfy-worker serve:"))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- serve stderr (tail) ---\n{_tail(tmp_path / 'serve.stderr')}"
                                 f"\n--- ComfyUI log (tail) ---\n{_tail(*state.rglob('comfyui.log'))}") from None
        comfy_pids = _comfyui_pids(comfy_port)
        assert len(comfy_pids) == 1, comfy_pids

        job = tmp_path / "sd15_t2i.json"
        job.write_text(json.dumps(graphs.sd15_t2i(steps=2, seed=21, size=64)))
        out = tmp_path / "out"
        done = subprocess.run([*_cli(), "call", str(job), "--router", router, "--out", str(out)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        response = json.loads(done.stdout)
        assert response["status"] == "success", response
        (png,) = sorted(out.glob("*.png"))
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert Image.open(png).size == (64, 64)
        # ComfyUI saved it under the temporary base (the extra args reached it), not in the
        # install, and the bridge found it there: it removes the request's folder once
        # delivered (in the background, so wait for it, boundedly).
        assert (layout.base / "output" / "cvw").is_dir()
        assert response["cost"]["gpu_seconds"] == round(response["timings"]["execution_ms"] / 1000, 4)

        # `comfy-worker loadtest` through the same stack: a report whose figures come from results.jsonl.
        report = tmp_path / "loadtest"
        done = subprocess.run([*_cli(), "loadtest", str(BENCHMARK), "--target", "vast:local", "--router", router,
                               "-n", "6", "-c", "2", "--out", str(report)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        records = [json.loads(x) for x in (report / "results.jsonl").read_text().splitlines()]
        figures = json.loads((report / "stats.json").read_text())["vast:local"]
        assert len(records) == figures["succeeded"] == 6 and "Local run" in (report / "report.md").read_text()
        assert figures["gpu_seconds"] == pytest.approx(sum(r["timings"]["execution_ms"] for r in records) / 1000)
        for _ in range(100):
            left = list((layout.base / "output").rglob("*.png"))
            if not left:
                break
            time.sleep(0.1)
        assert left == [], f"delivered outputs were not removed: {left}"

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, _tail(tmp_path / "serve.stderr")
        assert _comfyui_pids(comfy_port) == []
        for pid in comfy_pids:
            assert not _alive(pid), f"ComfyUI (pid {pid}) outlived the worker"
    finally:
        if server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        for pid in comfy_pids + _comfyui_pids(comfy_port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stderr.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tail(*paths: Path, lines: int = 40) -> str:
    out = []
    for p in paths:
        with contextlib.suppress(OSError):
            out += [f"[{p}]", *p.read_text(errors="replace").splitlines()[-lines:]]
    return "\n".join(out)
