"""The SSE reader (comfy_bridge.jobs.stream_protocol.SSEDecoder) and the relay's final-status
scanner (worker/stream_relay.py) on streams cut into arbitrary chunks."""

from __future__ import annotations

import json

import pytest

from comfy_bridge.jobs import stream_protocol as sp
from worker.stream_relay import FinalStatusScanner

BIG_RESULT = b"event: result\ndata: " + json.dumps({"id": "r", "blob": "x" * 100_000}).encode() + b"\n\n"
ERROR = (b": keep-alive\n\nevent: progress\ndata: {\"fraction\": 0.5}\n\nevent: error\ndata: "
         + json.dumps({"id": "e", "status": "failed", "http_status": 504,
                       "error": {"type": "timeout", "message": "y" * 6000, "retriable": True}}).encode() + b"\n\n")


def _chunks(raw: bytes, size: int) -> list[bytes]:
    return [raw[i:i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("size", [1, 7, 777, 1 << 20])
def test_decoder_yields_whole_messages_whatever_the_chunking(size):
    decoder = sp.SSEDecoder()
    messages = [m for c in _chunks(ERROR + BIG_RESULT, size) for m in decoder.feed(c)]
    assert [name for name, _ in messages] == ["progress", "error", "result"]
    error = sp.parse(*messages[1])
    assert isinstance(error, sp.ErrorEvent) and error.http_status == 504 and error.failure.error.retriable
    assert json.loads(messages[2][1])["blob"] == "x" * 100_000


@pytest.mark.parametrize("size", [3, 100, 4096])
def test_scanner_reads_the_final_status(size):
    ok = FinalStatusScanner()
    for c in _chunks(BIG_RESULT, size):
        ok.feed(c)
    assert ok.status == 200
    failed = FinalStatusScanner()
    for c in _chunks(ERROR, size):
        failed.feed(c)
    assert failed.status == 504 and json.loads(failed.error_body)["error"]["type"] == "timeout"


def test_a_stream_cut_inside_its_result_has_no_final_status():
    cut = FinalStatusScanner()
    cut.feed(BIG_RESULT[:5000])
    assert cut.status is None  # the relay reports 502
