"""On a laptop: `deploy apply` against the local control plane starts a worker, and
`comfy-worker call` through the same emulator's router gets its outputs.

The control plane is told about a ComfyUI double; the workergroup's worker is a real
`comfy-worker serve` process running the unmodified vastai PyWorker (worker/emulator/local_workers.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.conftest import API_KEY, writes
from worker.emulator.control_plane import ControlPlane

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def vast(tmp_path: Path, make_comfy_double) -> ControlPlane:
    double = await make_comfy_double()  # made first, so closed after the worker that uses it
    cp = ControlPlane(api_key=API_KEY, comfyui_url=double.url, instances_dir=tmp_path / "instances",
                      worker_env={"COMFY_WORKER_BENCHMARK_RUNS": "1"})
    await cp.start()
    yield cp
    await cp.stop()


async def test_apply_then_call_gets_outputs_from_the_worker_it_started(vast, run_deploy, tmp_path):
    r = await run_deploy("apply", "--yes", "--env", "local")
    assert r.rc == 0, r.text
    assert "Plan: 3 to add" in r.out
    (group_id,) = vast.workergroups
    (instance,) = vast.local.of_group(group_id)

    view = await vast.wait_for(lambda: vast.workers.get(instance.id) if instance.id in vast.workers
                               and (vast.workers[instance.id].ready or vast.workers[instance.id].error_msg)
                               else None, timeout=60)
    assert view.ready, instance.log_path.read_text()[-2000:]
    # the endpoint's max_queue_time reached the worker
    assert "COMFY_WORKER_MAX_QUEUE_TIME_S" in (await _environ(instance.proc.pid))

    status = await run_deploy("status", "--env", "local")
    assert f"{instance.id}: idle" in status.out

    out = tmp_path / "outputs"
    call = await run_deploy(str(REPO / "workflows" / "benchmark_weightless.json"), "--router", str(vast.url),
                            "--endpoint", "comfy-worker-local", "--api-key", API_KEY, "--out", str(out),
                            "--request-id", "deploy-e2e", command="call")
    assert call.rc == 0, call.text
    assert '"status": "success"' in call.out
    assert [p.suffix for p in out.iterdir()] == [".png"]

    before = list(writes(vast))
    again = await run_deploy("apply", "--yes", "--env", "local")
    assert again.rc == 0 and "no writes" in again.out
    assert writes(vast) == before

    assert (await run_deploy("destroy", "--yes", "--env", "local")).rc == 0
    assert instance.proc.returncode is not None and not vast.local.instances


async def _environ(pid: int) -> str:
    import asyncio

    return (await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)).decode(errors="replace")
