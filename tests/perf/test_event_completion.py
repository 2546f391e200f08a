"""A request completes from ComfyUI's events: outputs from `executed`, the end on
`executing: null`, no /history round trip; /history only when events may be missing."""

from __future__ import annotations

from comfy_bridge.comfyui.client import ComfyClient
from tests.support import save_graph


def _history_reads(double) -> list:
    return [r for r in double.requests if r.method == "GET" and r.path.startswith("/history")]


async def test_success_and_runtime_error_never_read_history(bridge, double):
    status, body = await bridge.generate(save_graph(batch=3))
    assert status == 200, body
    assert len(body["output"]) == 3 and body["timings"]["execution_ms"] >= 0
    double.fail_next_prompt("RuntimeError", "boom", class_type="EmptyImage")
    status, failed = await bridge.generate(save_graph(color=7))
    assert status == 500, failed
    assert failed["error"]["node_id"] == "1" and "boom" in failed["error"]["message"]
    assert _history_reads(double) == []


async def test_cached_output_node_reports_its_files_from_events(double):
    """An identical graph runs nothing; ComfyUI's `executed` for the cached node still
    lists the files, and that is what the client returns (cached_resubmit.json)."""
    client = ComfyClient(double.url)
    await client.start()
    try:
        results = []
        for pid in ("first-run", "cached-run"):
            await client.submit(save_graph(batch=2, prefix="same/out"), pid)
            results.append(await client.wait(pid))
    finally:
        await client.close()
    first, cached = results
    assert first.outputs["2"]["images"] and cached.outputs == first.outputs
    assert double.prompts_executed == 1 and double.prompts_finished == 2
    assert _history_reads(double) == []


async def test_dropped_websocket_reads_history_to_reconcile(bridge, double):
    double.close_websockets_mid_prompt()
    status, body = await bridge.generate(save_graph(batch=2))
    assert status == 200, body
    assert len(body["output"]) == 2
    assert len(_history_reads(double)) >= 1  # the events after the drop were lost: /history settles it
    reads = len(_history_reads(double))
    status, _ = await bridge.generate(save_graph(color=3))  # a fresh prompt on the new socket
    assert status == 200 and len(_history_reads(double)) == reads
