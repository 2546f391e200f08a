"""Behaviours of the double that the traces prove but a replay cannot pin down alone:
the /history race, the cache trap, per-client routing, faults, restart on the same port."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.comfy_double import ComfyDouble

from .helpers import Client, sd_graph, weightless

ROOT = Path(__file__).resolve().parents[2]


def _png(color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


async def test_history_race_entry_lands_after_terminal_event(make_comfy_double) -> None:
    double = await make_comfy_double(history_lag_s=5.0)
    async with Client(double.url, "race") as c:
        pid = await c.submit(weightless("race/a"))
        await c.wait(lambda m: m["type"] == "execution_success" and m["data"]["prompt_id"] == pid)
        status, early = await c.get(f"/history/{pid}")
        assert (status, early) == (200, {})
        await c.wait_done(pid)
        status, late = await c.get(f"/history/{pid}")
        assert late[pid]["status"]["status_str"] == "success"
        assert late[pid]["outputs"]["3"]["images"][0]["filename"] == "a_00001_.png"
        # the order the bridge must rely on: terminal event, status, then executing null
        assert c.types(pid)[-2:] == ["execution_success", "executing"]


async def test_history_race_applies_to_errors_and_interrupts(make_comfy_double) -> None:
    double = await make_comfy_double(history_lag_s=5.0)
    async with Client(double.url, "race2") as c:
        double.fail_next_prompt("torch.OutOfMemoryError", "CUDA out of memory.", class_type="ImageInvert")
        pid = await c.submit(weightless("race/err"))
        await c.wait(lambda m: m["type"] == "execution_error")
        assert (await c.get(f"/history/{pid}"))[1] == {}
        await c.wait_done(pid)
        assert (await c.get(f"/history/{pid}"))[1][pid]["status"]["status_str"] == "error"


async def test_cache_trap_and_prefix_rewrite(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "cache") as c:
        p1 = await c.run(weightless("trap/x"))
        files = sorted(p.name for p in (comfy_double.output_dir / "trap").iterdir())
        assert files == ["x_00001_.png", "x_00002_.png"]
        executed_before = comfy_double.prompts_executed

        p2 = await c.run(weightless("trap/x"))
        assert c.first(p2, "execution_cached")["data"]["nodes"] == ["1", "2", "3"]
        assert "executing" not in [m["type"] for m in c.events(p2) if m["data"].get("node") is not None]
        # executed still reports the first run's files, and nothing new was written
        assert c.first(p2, "executed")["data"]["output"] == c.first(p1, "executed")["data"]["output"]
        assert sorted(p.name for p in (comfy_double.output_dir / "trap").iterdir()) == files
        assert comfy_double.prompts_executed == executed_before

        # deleting the files after delivery and resubmitting: the trap bites (nothing to read)
        for f in files:
            (comfy_double.output_dir / "trap" / f).unlink()
        p3 = await c.run(weightless("trap/x"))
        names = [i["filename"] for i in c.first(p3, "executed")["data"]["output"]["images"]]
        assert names == files and not any((comfy_double.output_dir / "trap").iterdir())

        # a per-request prefix re-runs only the save node
        p4 = await c.run(weightless("trap/req-4"))
        assert c.first(p4, "execution_cached")["data"]["nodes"] == ["1", "2"]
        ran = [m["data"]["node"] for m in c.events(p4) if m["type"] == "executing" and m["data"]["node"]]
        assert ran == ["3"]
        assert (comfy_double.output_dir / "trap" / "req-4_00001_.png").is_file()


async def test_events_only_to_submitting_client(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "alice") as a, Client(comfy_double.url, "bob") as b:
        pid = await a.run(weightless("route/a"))
        await b.wait(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
                     and "sid" not in m["data"])
        assert {m["type"] for m in b.msgs} == {"status"}
        assert b.msgs[0]["data"]["sid"] == "bob"
        assert "execution_success" in a.types(pid)


async def test_counter_continues_and_outputs_are_real_pngs(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "cnt") as c:
        await c.run(weightless("cnt/img", color=1))
        await c.run(weightless("cnt/img", color=2))
        names = sorted(p.name for p in (comfy_double.output_dir / "cnt").iterdir())
        assert names == [f"img_0000{i}_.png" for i in range(1, 5)]
        with Image.open(comfy_double.output_dir / "cnt" / names[0]) as img:
            assert img.size == (64, 48)
            assert "prompt" in img.info  # SaveImage embeds the prompt like ComfyUI
        status, body = await c.get("/view?filename=img_00001_.png&subfolder=cnt&type=output")
        assert status == 200 and body.startswith(b"\x89PNG")


async def test_ksampler_progress_previews_and_res4lyf(make_comfy_double) -> None:
    double = await make_comfy_double(models={"checkpoints": ["sd15.safetensors"]}, exec_ms=30)
    async with Client(double.url, "ks") as c:
        pid = await c.run(sd_graph(steps=3))
        progress = [m["data"]["value"] for m in c.events(pid) if m["type"] == "progress"]
        assert progress == [1, 2, 3]
        frames = [m["data"] for m in c.events(pid) if m["type"] == "binary"]
        assert [(f["event"], f["image_type"]) for f in frames] == [(1, 1)] * 3
        assert frames[0]["payload"][:2] == b"\xff\xd8"
        pid2 = await c.run(sd_graph(steps=3, sampler="res_2s", seed=2))
        assert c.first(pid2, "execution_cached")["data"]["nodes"] == ["4", "5", "6", "7"]
        assert [m["data"]["value"] for m in c.events(pid2) if m["type"] == "progress"] == [1, 2, 3, 3]


async def test_validation_shapes(make_comfy_double) -> None:
    double = await make_comfy_double(models={"checkpoints": ["sd15.safetensors"]})
    async with Client(double.url, "val") as c:
        status, body = await c.post("/prompt", {"prompt": sd_graph(ckpt="sdxl_missing.safetensors", sampler="nope")})
        assert status == 400
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        kinds = {n: [e["type"] for e in v["errors"]] for n, v in body["node_errors"].items()}
        assert kinds == {"4": ["value_not_in_list"], "3": ["value_not_in_list"]}
        assert body["node_errors"]["4"]["dependent_outputs"] == ["9"]
        bad = sd_graph()
        bad["3"]["inputs"]["steps"] = 0
        bad["3"]["inputs"]["cfg"] = 1000
        status, body = await c.post("/prompt", {"prompt": bad})
        assert [e["type"] for e in body["node_errors"]["3"]["errors"]] == ["value_smaller_than_min", "value_bigger_than_max"]
        status, body = await c.post("/prompt", {"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
                                                           "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}})
        assert body["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
        s_extra = await c.post("/prompt", {"prompt": {"1": {"class_type": "ClownsharKSampler_Beta", "inputs": {}}}})
        assert s_extra[1]["error"]["type"] == "prompt_no_outputs"


async def test_upload_dedup_rename_and_fault(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "up") as c:
        async def upload(data: bytes, name: str = "a.png", **fields: str) -> tuple[int, object]:
            form = aiohttp.FormData()
            form.add_field("image", data, filename=name, content_type="image/png")
            for k, v in fields.items():
                form.add_field(k, v)
            async with c.session.post(comfy_double.url + "/upload/image", data=form) as r:
                return r.status, (await r.json() if r.status == 200 else await r.text())

        assert await upload(_png(), subfolder="s") == (200, {"name": "a.png", "subfolder": "s", "type": "input"})
        assert (await upload(_png(), subfolder="s"))[1]["name"] == "a.png"
        assert (await upload(_png((1, 2, 3)), subfolder="s"))[1]["name"] == "a (1).png"
        assert (await upload(_png((1, 2, 4)), subfolder="s", overwrite="true"))[1]["name"] == "a.png"
        comfy_double.fail_uploads(503, count=1)
        assert (await upload(_png()))[0] == 503
        assert (await upload(_png()))[0] == 200


async def test_interrupt_hung_prompt_and_queue_delete(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "intr") as c:
        comfy_double.hang_next_prompt()
        a = await c.submit(weightless("intr/a", color=7))
        b = await c.submit(weightless("intr/b", color=8))
        await c.wait(lambda m: m["type"] == "executing" and m["data"].get("node") == "1")
        _, q = await c.get("/queue")
        assert [i[1] for i in q["queue_running"]] == [a] and [i[1] for i in q["queue_pending"]] == [b]
        await c.post("/interrupt", {"prompt_id": "not-running"})  # ignored, as in ComfyUI
        await c.post("/queue", {"delete": [b]})
        await c.post("/interrupt", {"prompt_id": a})
        await c.wait_done(a)
        intr = c.first(a, "execution_interrupted")["data"]
        assert intr["node_id"] == "2" and intr["executed"] == ["1"]  # seen at the next checkpoint
        assert c.events(b) == []
        _, q = await c.get("/queue")
        assert q == {"queue_running": [], "queue_pending": []}


async def test_hang_release_and_exec_error_fields(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "rel") as c:
        comfy_double.hang_next_prompt()
        pid = await c.submit(weightless("rel/a", color=3))
        await c.wait(lambda m: m["type"] == "executing" and m["data"].get("node") == "1")
        comfy_double.release()
        await c.wait_done(pid)
        assert "execution_success" in c.types(pid)

        comfy_double.fail_next_prompt("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB",
                                      class_type="SaveImage")
        pid = await c.run(weightless("rel/b", color=4))
        err = c.first(pid, "execution_error")["data"]
        assert set(err) == {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                            "traceback", "current_inputs", "current_outputs", "timestamp"}
        assert (err["node_id"], err["node_type"], err["exception_type"]) == ("3", "SaveImage", "torch.OutOfMemoryError")
        assert err["exception_message"].startswith("CUDA out of memory") and "TIPS" in err["exception_message"]
        assert err["executed"] == ["1", "2"]
        comfy_double.fail_next_prompt("RuntimeError", "CUDA error: an illegal memory access was encountered")
        pid = await c.run(weightless("rel/c", color=5))
        err = c.first(pid, "execution_error")["data"]
        assert (err["exception_type"], err["node_id"]) == ("RuntimeError", "1")


async def test_websockets_closed_mid_prompt_then_reconnect(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "drop") as c:
        comfy_double.close_websockets_mid_prompt()
        comfy_double.hang_next_prompt()
        pid = await c.submit(weightless("drop/a", color=9))
        await asyncio.wait_for(c.closed.wait(), 10)
        await c.connect()  # same clientId: status, then the node that is running
        await c.wait(lambda m: m["type"] == "executing" and m["data"].get("node") == "1" and "prompt_id" not in m["data"])
        comfy_double.release()
        await c.wait_done(pid)
        assert (await c.get(f"/history/{pid}"))[1][pid]["status"]["status_str"] == "success"


async def test_stop_start_same_port_and_slow_history(comfy_double: ComfyDouble) -> None:
    port = comfy_double.port
    await comfy_double.stop()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(f"http://127.0.0.1:{port}/system_stats")
        await comfy_double.start()
        assert comfy_double.port == port
        comfy_double.slow_history(0.05)
        async with s.get(comfy_double.url + "/history") as r:
            assert r.status == 200
        comfy_double.fail_http("/system_stats", 503)
        async with s.get(comfy_double.url + "/system_stats") as r:
            assert r.status == 503
    assert [r.path for r in comfy_double.requests_to("/system_stats")] == ["/system_stats"]


async def test_stop_forget_is_a_fresh_process(comfy_double: ComfyDouble) -> None:
    async with Client(comfy_double.url, "crash") as c:
        pid = await c.run(weightless("crash/a"))
    await comfy_double.stop(forget=True)
    await comfy_double.start()
    async with Client(comfy_double.url, "crash") as c:
        assert (await c.get(f"/history/{pid}"))[1] == {}
        _, body = await c.post("/prompt", {"prompt": weightless("crash/a"), "client_id": "crash"})
        assert body["number"] == 0
        await c.wait_done(body["prompt_id"])
        assert c.first(body["prompt_id"], "execution_cached")["data"]["nodes"] == []


async def test_preview_metadata_frames_for_clients_that_ask(make_comfy_double) -> None:
    double = await make_comfy_double(models={"checkpoints": ["sd15.safetensors"]})
    async with Client(double.url, "meta") as c:
        assert c.ws is not None
        await c.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        await c.wait(lambda m: m["type"] == "feature_flags")
        pid = await c.run(sd_graph(steps=2))
        frames = [m["data"] for m in c.events(pid) if m["type"] == "binary"]
        assert [f["event"] for f in frames] == [4, 4]
        raw = frames[0]["image_type"].to_bytes(4, "big") + frames[0]["payload"]  # event 4: u32 length, JSON, image
        meta_len = int.from_bytes(raw[:4], "big")
        import json as _json
        meta = _json.loads(raw[4:4 + meta_len])
        assert meta["node_id"] == "3" and meta["prompt_id"] == pid and meta["image_type"] == "image/jpeg"
        assert raw[4 + meta_len:][:2] == b"\xff\xd8"


async def test_other_output_kinds_write_real_files(comfy_double: ComfyDouble) -> None:
    g = {
        "1": {"class_type": "DoubleNoiseImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "seed": 1}},
        "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "k/anim", "fps": 6.0,
                                                           "lossless": True, "quality": 80, "method": "default"}},
        "3": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 8, "loop_count": 0,
                                                           "filename_prefix": "k/vid", "format": "image/gif",
                                                           "pingpong": False, "save_output": True}},
        "4": {"class_type": "DoubleSineAudio", "inputs": {"seconds": 0.05, "frequency": 440.0}},
        "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": "k/snd"}},
    }
    async with Client(comfy_double.url, "kinds") as c:
        pid = await c.run(g)
        _, hist = await c.get(f"/history/{pid}")
        out = hist[pid]["outputs"]
        assert out["2"]["animated"] == [True] and out["2"]["images"][0]["filename"].endswith(".webp")
        gif = out["3"]["gifs"][0]
        assert {"filename", "subfolder", "type", "format"} <= set(gif) and gif["format"] == "image/gif"
        assert out["5"]["audio"][0]["filename"].startswith("snd_")
        for entry in (out["2"]["images"][0], gif, out["5"]["audio"][0]):
            assert (comfy_double.output_dir / entry["subfolder"] / entry["filename"]).stat().st_size > 0


async def test_noise_image_weighs_like_a_real_output(comfy_double: ComfyDouble) -> None:
    g = {"1": {"class_type": "DoubleNoiseImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "seed": 3}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big/n"}}}
    async with Client(comfy_double.url, "big") as c:
        await c.run(g)
    size = (comfy_double.output_dir / "big" / "n_00001_.png").stat().st_size
    assert 1_500_000 < size < 2_200_000


def test_cli_serves_until_sigterm(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.comfy_double", "--port", "0", "--root", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("To see the GUI go to: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:")

        async def probe() -> int:
            async with aiohttp.ClientSession() as s, s.get(url + "/system_stats") as r:
                return r.status

        assert asyncio.run(probe()) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
