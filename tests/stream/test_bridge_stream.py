"""POST /generate/stream on the bridge, against the ComfyUI double: the event sequence of a
success, a validation failure, a runtime failure, a deadline and a cache hit; the first
event arriving while the prompt still runs; previews; keep-alive comments."""

from __future__ import annotations

import asyncio

from comfy_bridge.jobs import stream_protocol as sp
from tests.comfy_double.faults import ExecError
from tests.stream.conftest import post_stream, sd15_graph
from tests.support import save_graph


def _collapse(names: list[str]) -> list[str]:
    """Event names with runs of the same name folded into one."""
    out: list[str] = []
    for n in names:
        if not out or out[-1] != n:
            out.append(n)
    return out


async def test_success_streams_queued_started_progress_then_the_sync_body(bridge):
    s = await post_stream(bridge, {"workflow_json": sd15_graph(steps=4), "request_id": "st-1"})
    assert s.status == 200 and s.content_type == sp.CONTENT_TYPE
    assert _collapse(s.names) == ["queued", "started", "progress", "result"]
    queued, started = s.events[0], s.events[1]
    assert queued.request_id == "st-1" and queued.position == 0 and queued.prompt_id
    assert started.prompt_id == queued.prompt_id
    steps = [e for e in s.events if e.event == "progress" and e.value is not None]
    expected = [("3", "KSampler", float(v), 4.0) for v in range(1, 5)]
    assert [(e.node, e.node_type, e.value, e.max) for e in steps] == expected
    fractions = [e.fraction for e in s.events if e.event == "progress"]
    assert fractions == sorted(fractions) and 0 < fractions[-2] < 1 and fractions[-1] == 1.0
    result = s.final
    assert isinstance(result, sp.ResultEvent)
    assert result.response.id == "st-1" and result.response.prompt_id == queued.prompt_id
    [out] = result.response.output
    assert out.mimetype == "image/png" and out.data
    assert s.names.count("result") == 1 and "error" not in s.names


async def test_validation_failure_is_the_plain_422_json(bridge):
    s = await post_stream(bridge, {"workflow_json": {"1": {"class_type": "NoSuchNode", "inputs": {}}},
                                   "request_id": "st-bad"})
    assert s.status == 422 and s.content_type == "application/json"
    assert s.body["status"] == "failed" and s.body["id"] == "st-bad"
    assert "NoSuchNode" in s.body["error"]["message"]


async def test_a_graph_comfyui_rejects_is_the_plain_422_json(bridge):
    graph = sd15_graph(steps=2)
    graph["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    s = await post_stream(bridge, {"workflow_json": graph})
    assert s.status == 422 and s.body["error"]["retriable"] is False


async def test_runtime_failure_ends_with_one_error_event_carrying_500(bridge, sampler_double):
    sampler_double.faults.exec_errors.append(
        ExecError("RuntimeError", "mat1 and mat2 shapes cannot be multiplied", class_type="KSampler"))
    s = await post_stream(bridge, {"workflow_json": sd15_graph(steps=2), "request_id": "st-err"})
    assert s.status == 200
    assert s.names[0] == "queued" and "started" in s.names
    assert s.names[-1] == "error" and s.names.count("error") == 1 and "result" not in s.names
    err = s.final
    assert isinstance(err, sp.ErrorEvent) and err.http_status == 500
    assert err.failure.id == "st-err" and err.failure.error.type == "execution_error"
    assert err.failure.error.model_extra["node_type"] == "KSampler"


async def test_deadline_ends_with_an_error_event_carrying_504(bridge, sampler_double):
    sampler_double.hang_next_prompt()
    s = await post_stream(bridge, {"workflow_json": save_graph(), "timeout_s": 0.5})
    assert _collapse(s.names)[:2] == ["queued", "started"]
    assert s.names[-1] == "error"
    assert s.final.http_status == 504 and s.final.failure.error.retriable is True
    assert "interrupted" in s.final.failure.error.message


async def test_cache_hit_reports_only_the_nodes_that_run_and_fresh_files(bridge):
    graph = save_graph(color=7)
    first = await post_stream(bridge, {"workflow_json": graph})
    second = await post_stream(bridge, {"workflow_json": graph})
    assert _collapse(second.names) == ["queued", "started", "progress", "result"]
    ran = {e.node for e in second.events if e.event == "progress"} - {None}
    assert ran == {"2"}  # EmptyImage came from ComfyUI's cache
    assert [e.fraction for e in second.events if e.event == "progress"] == [0.5, 1.0]
    assert second.final.response.output[0].data
    assert second.final.response.prompt_id != first.final.response.prompt_id


async def test_first_event_arrives_while_the_prompt_still_runs(bridge, sampler_double):
    sampler_double.hang_next_prompt()
    seen: list[str] = []
    released = asyncio.Event()

    async def on_event(event) -> None:
        seen.append(event.event)
        if event.event == "started" and not released.is_set():
            assert sampler_double.queue.running  # the prompt is still running in ComfyUI
            released.set()
            sampler_double.release()

    s = await post_stream(bridge, {"workflow_json": save_graph()}, on_event)
    assert released.is_set() and s.names[-1] == "result"
    assert seen[:2] == ["queued", "started"]


async def test_queued_position_moves_as_the_prompts_ahead_finish(bridge, sampler_double):
    sampler_double.hang_next_prompt()
    blocker = asyncio.ensure_future(post_stream(bridge, {"workflow_json": save_graph(color=1)}))
    positions: list[int | None] = []

    async def on_event(event) -> None:
        if event.event == "queued":
            positions.append(event.position)
            if len(positions) == 1:
                sampler_double.release()

    while not sampler_double.queue.running:
        await asyncio.sleep(0.01)
    s = await post_stream(bridge, {"workflow_json": save_graph(color=2)}, on_event)
    assert positions[0] == 1 and s.names[-1] == "result"
    assert (await blocker).names[-1] == "result"


async def test_previews_are_opt_in_small_jpegs_rate_limited(make_comfy_double, make_bridge):
    from tests.worker.conftest import CKPT

    double = await make_comfy_double(models={"checkpoints": [CKPT]}, exec_ms=400)
    bridge = await make_bridge(double.url, double.root, stream_preview_interval_s=0.15, stream_preview_max_px=32)
    off = await post_stream(bridge, {"workflow_json": sd15_graph(steps=8, width=256, height=256)})
    assert "preview" not in off.names
    on = await post_stream(bridge, {"workflow_json": sd15_graph(steps=8, width=256, height=256, seed=2),
                                    "previews": True})
    previews = [e for e in on.events if e.event == "preview"]
    assert 1 <= len(previews) < 8  # rate-limited: fewer than the sampler's 8 frames
    import base64
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(previews[0].data)))
    assert img.format == "JPEG" and max(img.size) <= 32
    assert previews[0].node == "3" and on.names[-1] == "result"


async def test_keepalive_comments_while_silent(make_comfy_double, make_bridge):
    double = await make_comfy_double()
    bridge = await make_bridge(double.url, double.root, stream_keepalive_s=0.05)
    double.hang_next_prompt()
    task = asyncio.ensure_future(post_stream(bridge, {"workflow_json": save_graph()}))
    while not double.queue.running:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # silence on purpose: what the keep-alive is for
    double.release()
    s = await task
    assert s.keepalives >= 2 and s.names[-1] == "result"


async def test_a_caller_who_leaves_mid_stream_gets_the_prompt_interrupted(bridge, sampler_double):
    sampler_double.hang_next_prompt()
    decoder = sp.SSEDecoder()
    async with bridge.session.post(bridge.url + sp.ROUTE, json={"input": {"workflow_json": save_graph()}}) as r:
        async for chunk in r.content.iter_any():
            if any(name == "started" for name, _ in decoder.feed(chunk)):
                break  # leave: the connection closes with the body unread
    while not sampler_double.requests_to("/interrupt", "POST"):
        await asyncio.sleep(0.01)
    while bridge.runner.prompts_inflight:
        await asyncio.sleep(0.01)
    assert not sampler_double.queue.running
