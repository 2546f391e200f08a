"""ComfyDouble: a protocol-faithful fake ComfyUI (v0.3.64 + RES4LYF 7750bf7) for tests and benches.

Faithful to the recorded traces in tests/fixtures/comfyui-protocol/ (a contract test replays
them): HTTP routes, status codes, content types and JSON shapes (also under /api/); the
websocket (`status` with `sid` first; per-prompt events only to the submitting client_id;
status broadcasts); the exact event order (execution_start, execution_cached,
progress_state, executing, progress + binary previews, executed, execution_success /
_error / _interrupted, status, executing null); the /history race (the entry lands after
the terminal event is on the wire; `history_lag_s` holds that gap open until an eager
GET /history/{id} has been answered `{}`); the classic cache (identical inputs -> cached,
`executed` re-reports the old filenames, nothing written); validation error shapes;
ExecutionList's node order; SaveImage counters; /upload/image dedup and renaming.
Not modelled: real pixels (images are lazy colour/noise specs; blur/sharpen pass through),
models (any file under models/<folder>/ "loads"), VRAM, lazy inputs, subgraph expansion,
partial node_errors on the prompt_id of a later queue, the frontend, /userdata, /internal,
view ?preview/channel conversions, FLAC (SaveAudio writes WAV), a real MP4 encoder.

    double = ComfyDouble(exec_ms=50, models={"checkpoints": ["sd15.safetensors"]})
    url = await double.start()          # port 0 -> ephemeral; stop()/start() keeps the port
    double.fail_next_prompt("torch.OutOfMemoryError", "CUDA out of memory", class_type="KSampler")
    await double.stop()

Runnable: `python -m tests.comfy_double --port 8188 [--exec-ms 30] [--root DIR]`.
"""

from .faults import ExecError, Faults
from .server import ComfyDouble, RecordedRequest

__all__ = ["ComfyDouble", "ExecError", "Faults", "RecordedRequest"]
