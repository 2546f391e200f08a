"""The worker answer's `cost` (worker/cost.py): added to a streamed success body whatever
its size or key order; dollars only with a price. The full path (PyWorker relay, real
framework) is checked in tests/loadtest/test_vast_stack.py."""

from __future__ import annotations

import json

import pytest

from worker.cost import WINDOW, CostSplicer


def _stream(body: bytes, price: float | None, chunk: int) -> bytes:
    s = CostSplicer(price)
    out = b"".join(s.feed(body[i:i + chunk]) for i in range(0, len(body), chunk))
    return out + s.finish()


def _body(timings_first: bool, data_bytes: int) -> bytes:
    timings = {"queued_ms": 1.0, "inputs_ms": 0.0, "execution_ms": 1342.0, "outputs_ms": 3.0, "total_ms": 1350.0}
    output = [{"filename": "a.png", "node_id": "9", "output_type": "images", "mimetype": "image/png",
               "bytes": data_bytes, "data": "A" * data_bytes}]
    fields = [("id", "r1"), ("status", "success"), ("prompt_id", "p1")]
    fields += [("timings", timings), ("output", output)] if timings_first else [("output", output), ("timings", timings)]
    return json.dumps(dict(fields + [("workload", 21.0)])).encode()


@pytest.mark.parametrize("timings_first", [False, True])
@pytest.mark.parametrize("chunk", [7, 256 * 1024])
def test_cost_is_spliced_into_large_bodies(timings_first: bool, chunk: int):
    body = _body(timings_first, 3 * WINDOW)
    answer = json.loads(_stream(body, 2.0, chunk))
    assert answer["cost"] == {"gpu_seconds": 1.342, "usd": round(1.342 * 2.0 / 3600, 8), "gpu_price_per_hour": 2.0}
    del answer["cost"]
    assert answer == json.loads(body)


def test_without_a_price_only_gpu_seconds():
    assert json.loads(_stream(_body(False, 10), None, 1000))["cost"] == {"gpu_seconds": 1.342}


def test_a_body_without_timings_goes_out_unchanged():
    body = json.dumps({"id": "x", "anything": [1, 2, 3]}).encode()
    assert _stream(body, 2.0, 5) == body
