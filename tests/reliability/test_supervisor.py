"""ComfySupervisor against a fake ComfyUI process (tests/reliability/fake_comfy.py):
readiness by HTTP probe, crash -> restart, crash loop -> failed with the log tail,
a start that never answers, liveness, process-group cleanup, fatal marking, import failures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from comfy_bridge.comfyui.child_log import parse_import_failures
from comfy_bridge.comfyui.failures import classify_execution_error
from comfy_bridge.comfyui.supervisor import ComfySupervisor
from comfy_bridge.errors import ComfyUnavailable, ComfyUnrecoverable
from comfy_bridge.settings import BridgeSettings

from .conftest import FAKE_COMFY, FIXTURES, Recorder

STARTUP_LOG = FIXTURES / "comfyui-startup.log"


async def _post(url: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(url) as r:
        assert r.status == 200


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for a reaper counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def _until_gone(pid: int) -> bool:
    for _ in range(200):  # bounded polling: the kernel reaps asynchronously
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_starts_and_becomes_ready(make_supervisor, tmp_path: Path) -> None:
    sup = make_supervisor()
    rec = Recorder()
    sup.add_listener(rec)
    await sup.start()
    assert sup.state == "ready"
    assert rec.states == ["starting", "ready"]
    assert await _status(sup.url + "/system_stats") == 200
    log_text = sup.log_path.read_text()
    assert f"--listen 127.0.0.1 --port {sup.port} --disable-auto-launch --cpu" in log_text
    assert "Starting server" in log_text
    sup.check_available()  # no raise while ready


async def test_crash_is_noticed_and_restarted(make_supervisor) -> None:
    sup = make_supervisor()
    await sup.start()
    rec = Recorder()
    sup.add_listener(rec)
    told = asyncio.Event()

    async def async_listener(state: str, reason: str) -> None:
        if state == "restarting":
            told.set()

    sup.add_listener(async_listener)
    first_pid = sup.pid

    await _post(sup.url + "/fault/exit?code=7")
    assert await sup.wait_unavailable() == "restarting"
    assert "exited with code 7" in sup.reason
    with pytest.raises(ComfyUnavailable) as exc:
        sup.check_available()
    assert exc.value.retriable and not isinstance(exc.value, ComfyUnrecoverable)

    await sup.wait_ready(20)
    await asyncio.wait_for(told.wait(), 5)
    assert rec.states == ["restarting", "ready"]
    assert sup.restarts == 1
    assert sup.pid != first_pid
    assert sup.last_exit_code == 7
    assert await _status(sup.url + "/system_stats") == 200


async def test_crash_loop_gives_up_with_log_tail(make_supervisor) -> None:
    sup = make_supervisor("--exit-at-start", "3", max_crashes=3, crash_window_s=60)
    rec = Recorder()
    sup.add_listener(rec)
    with pytest.raises(ComfyUnrecoverable) as exc:
        await sup.start()
    assert sup.state == "failed"
    assert rec.states == ["starting", "restarting", "restarting", "failed"]
    assert sup.restarts == 2
    reason = sup.failure_reason or ""
    assert "3 times within 60s" in reason
    assert "exited with code 3" in reason
    assert "RuntimeError: fake ComfyUI cannot start" in reason  # the log tail names the cause
    assert "fake ComfyUI cannot start" in exc.value.message
    assert exc.value.status == 503
    with pytest.raises(ComfyUnrecoverable):
        await sup.wait_ready(1)


async def test_start_that_never_answers_times_out(make_supervisor) -> None:
    sup = make_supervisor("--hang-at-start", start_timeout_s=1.0)
    with pytest.raises(ComfyUnrecoverable) as exc:
        await sup.start()
    assert "did not answer GET /system_stats within 1s" in exc.value.message
    assert sup.state == "failed"
    assert sup.last_exit_code == -signal.SIGKILL  # the hung child was killed, not left behind


async def test_stop_kills_the_whole_process_group(make_supervisor, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    sup = make_supervisor("--spawn-grandchild", str(pidfile))
    await sup.start()
    child, grandchild = sup.pid, int(pidfile.read_text())
    assert child is not None and _alive(child) and _alive(grandchild)
    rec = Recorder()
    sup.add_listener(rec)
    await sup.stop(grace_s=5)
    assert sup.state == "stopped" and rec.states == ["stopped"]
    assert await _until_gone(child)
    assert await _until_gone(grandchild)
    with pytest.raises(ComfyUnavailable):
        sup.check_available()


async def test_stop_escalates_to_sigkill(make_supervisor) -> None:
    sup = make_supervisor("--ignore-sigterm")
    await sup.start()
    await sup.stop(grace_s=0.3)
    assert sup.last_exit_code == -signal.SIGKILL


async def test_mark_fatal_fails_at_once_and_for_good(make_supervisor) -> None:
    sup = make_supervisor()
    await sup.start()
    rec = Recorder()
    sup.add_listener(rec)
    sup.mark_fatal("CUDA error: an illegal memory access was encountered")
    assert sup.state == "failed"
    assert rec.events == [("failed", "CUDA error: an illegal memory access was encountered")]
    with pytest.raises(ComfyUnrecoverable) as exc:
        sup.check_available()
    assert "illegal memory access" in exc.value.message
    with pytest.raises(ComfyUnrecoverable):
        await sup.wait_ready(1)
    await sup.stop(grace_s=2)
    assert sup.state == "failed" and sup.restarts == 0  # stays failed: the reason keeps being reported


async def test_unresponsive_comfyui_is_killed_and_restarted(make_supervisor) -> None:
    sup = make_supervisor(liveness_interval_s=0.1, liveness_failures=2, probe_timeout_s=0.3)
    await sup.start()
    await _post(sup.url + "/fault/hang")
    assert await sup.wait_unavailable() == "restarting"
    assert "stopped answering" in sup.reason
    await sup.wait_ready(20)
    assert sup.restarts == 1


async def test_restart_on_request_counts_as_a_crash(make_supervisor) -> None:
    sup = make_supervisor()
    await sup.start()
    await sup.restart("watchdog: no event for 120s while executing")
    assert sup.state == "restarting"
    assert "watchdog" in sup.reason
    await sup.wait_ready(20)
    assert sup.restarts == 1


async def test_import_failures_are_read_from_the_log(make_supervisor) -> None:
    sup = make_supervisor("--print-log", str(STARTUP_LOG))
    await sup.start()
    assert sup.import_failures() == [
        "/opt/ComfyUI/custom_nodes/RES4LYF",
        "nodes_audio.py",
        "nodes_audio_encoder.py",
    ]
    assert sup.import_errors()["/opt/ComfyUI/custom_nodes/RES4LYF"] == "No module named 'kornia'"


def test_parse_import_failures_on_the_recorded_log() -> None:
    lines = STARTUP_LOG.read_text().splitlines()
    assert parse_import_failures(lines) == [
        "/opt/ComfyUI/custom_nodes/RES4LYF",
        "nodes_audio.py",
        "nodes_audio_encoder.py",
    ]
    assert parse_import_failures(["Starting server", "got prompt"]) == []


async def test_log_file_is_capped(make_supervisor, tmp_path: Path) -> None:
    cap = 40_000
    sup = make_supervisor("--spew-lines", "3000", max_log_bytes=cap)
    await sup.start()
    rotated = sup.log_path.with_name(sup.log_path.name + ".1")
    assert rotated.exists()
    assert sup.log_path.stat().st_size <= cap + 65536  # at most one pipe read over the cap
    assert rotated.stat().st_size <= cap + 65536
    assert "Starting server" in sup.log_tail(5)[-2]


async def test_launch_failure_is_unrecoverable(tmp_path: Path) -> None:
    sup = ComfySupervisor(tmp_path, command=[str(tmp_path / "no-such-python")], cpu=True,
                          log_path=tmp_path / "c.log")
    try:
        with pytest.raises(ComfyUnrecoverable) as exc:
            await sup.start()
        assert "cannot launch ComfyUI" in exc.value.message
    finally:
        await sup.stop()


async def test_not_started_is_unavailable_not_unrecoverable(tmp_path: Path) -> None:
    sup = ComfySupervisor(tmp_path, command=[sys.executable, str(FAKE_COMFY)])
    with pytest.raises(ComfyUnavailable) as exc:
        sup.check_available()
    assert not isinstance(exc.value, ComfyUnrecoverable)
    with pytest.raises(ComfyUnavailable):
        await sup.wait_ready(0.1)


def test_command_line(tmp_path: Path) -> None:
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/python").touch()
    sup = ComfySupervisor(tmp_path, port=18555, cpu=False, extra_args=["--preview-method", "none"])
    freeze_config = tmp_path / "cvw_gc_freeze.yaml"  # beside the log: the gc.freeze pack, loaded last
    assert sup.argv == [
        str(tmp_path / ".venv/bin/python"), "main.py", "--listen", "127.0.0.1", "--port", "18555",
        "--disable-auto-launch", "--preview-method", "none", "--extra-model-paths-config", str(freeze_config),
    ]
    assert "--cpu" in ComfySupervisor(tmp_path, cpu=True).argv
    assert sup.url == "http://127.0.0.1:18555"
    assert "--extra-model-paths-config" not in ComfySupervisor(tmp_path, gc_freeze=False).argv

    settings = BridgeSettings(comfyui_path=tmp_path, comfyui_url="http://127.0.0.1:18999")
    from_settings = ComfySupervisor.from_settings(settings, cpu=True)
    assert from_settings.port == 18999 and "--cpu" in from_settings.argv
    assert "--extra-model-paths-config" in from_settings.argv
    off = BridgeSettings(comfyui_path=tmp_path, comfyui_gc_freeze=False)
    assert "--extra-model-paths-config" not in ComfySupervisor.from_settings(off).argv


def test_child_environment_has_no_bridge_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("COMFY_BRIDGE_WEBHOOK_SECRET", "hook-secret")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    env = ComfySupervisor._child_env()
    assert "S3_SECRET_ACCESS_KEY" not in env and "COMFY_BRIDGE_WEBHOOK_SECRET" not in env
    assert env["HF_HOME"] == "/models/hf" and env["PYTHONUNBUFFERED"] == "1"
    assert os.environ["S3_SECRET_ACCESS_KEY"] == "very-secret"  # ours untouched


async def test_port_taken_by_another_process_is_not_mistaken_for_ready(make_supervisor) -> None:
    sup = make_supervisor(port_wait_s=0.2)
    squatter = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", sup.port)
    try:
        with pytest.raises(ComfyUnrecoverable) as exc:
            await sup.start()
        assert f"port {sup.port}" in exc.value.message and "already in use" in exc.value.message
    finally:
        squatter.close()
        await squatter.wait_closed()


@pytest.mark.parametrize(
    ("etype", "message", "kind"),
    [
        ("RuntimeError", "CUDA error: device-side assert triggered\nCUDA kernel errors might be "
         "asynchronously reported", "cuda_fatal"),
        ("torch.AcceleratorError", "CUDA error: an illegal memory access was encountered", "cuda_fatal"),
        ("RuntimeError", "CUDA error: unspecified launch failure", "cuda_fatal"),
        ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_memory"),
        ("torch.cuda.OutOfMemoryError", "Allocation on device 0 would exceed allowed memory. "
         "(out of memory)", "out_of_memory"),
        ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
         "out_of_memory"),
        ("PIL.UnidentifiedImageError", "cannot identify image file '/opt/ComfyUI/input/corrupt.png'", None),
        ("ValueError", "memory format not supported", None),
        (None, None, None),
    ],
)
def test_execution_errors_are_classified(etype, message, kind) -> None:
    assert classify_execution_error(etype, message) == kind
