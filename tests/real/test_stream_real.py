"""POST /generate/stream against a real ComfyUI: a KSampler run streams queued, started,
per-step progress with ComfyUI's own step values, then the result."""

from __future__ import annotations

import json

from comfy_bridge.jobs import stream_protocol as sp
from tests.real import graphs
from tests.real.conftest import RealComfy


async def test_stream_of_a_ksampler_run_shows_its_steps(bridge, sd15_warm: RealComfy) -> None:
    names: list[str] = []
    events = []
    async with bridge.session.post(bridge.url + sp.ROUTE, json={"input": {
            "workflow_json": graphs.sd15_t2i(steps=3, seed=21), "request_id": "real-stream-1"}}) as r:
        assert r.status == 200 and r.content_type == sp.CONTENT_TYPE
        decoder = sp.SSEDecoder()
        async for chunk in r.content.iter_any():
            for name, data in decoder.feed(chunk):
                names.append(name)
                events.append(sp.parse(name, data))
                print(f"event: {name}\ndata: {data[:300]}\n")  # the captured stream (-s shows it)
    assert names[0] == "queued" and names[1] == "started" and names[-1] == "result"
    steps = [(e.value, e.max) for e in events if isinstance(e, sp.ProgressEvent)
             and e.node_type == "KSampler" and e.value is not None]
    assert steps == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
    fractions = [e.fraction for e in events if isinstance(e, sp.ProgressEvent)]
    assert fractions == sorted(fractions)
    result = events[-1]
    assert result.response.id == "real-stream-1" and result.response.output[0].mimetype == "image/png"
    json.dumps(result.response.timings.model_dump())
