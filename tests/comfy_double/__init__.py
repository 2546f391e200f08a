"""ComfyDouble: a protocol-faithful fake ComfyUI (v0.3.64 + RES4LYF 7750bf7) for tests and benches.

Faithful to the recorded traces in tests/fixtures/comfyui-protocol/ (tests/contract replays
them): routes (also under /api/), status codes, content types, JSON shapes; the websocket
(`status` with `sid` first, per-prompt events only to the submitting client_id, status
broadcasts, `executing {node}` on reconnect); event order (execution_start, execution_cached,
progress_state, executing, progress + binary previews, executed, terminal event, status,
executing null); the /history race (the entry lands after the terminal event is on the
wire; `history_lag_s` > 0 holds the gap open until an eager GET /history/{id} got `{}`);
the classic cache (same inputs -> cached, `executed` re-reports old files, nothing written;
only the previous prompt's nodes are kept); validation shapes; ExecutionList node order;
SaveImage counters; upload dedup/renaming; interrupts seen only at checkpoints (node start,
sampler step). `exec_ms` is spent once per prompt that runs anything: split over sampler
steps, else in the first non-output node that runs.
Not modelled: real pixels (lazy colour/noise specs; blur/sharpen pass through), model
loading/VRAM (any file under models/<folder>/ loads), lazy inputs, subgraphs, the frontend,
/userdata, /internal, /view ?preview/&channel, FLAC (SaveAudio writes WAV), MP4 encoding.

    double = ComfyDouble(exec_ms=50, models={"checkpoints": ["sd15.safetensors"]})
    url = await double.start()          # port 0 -> ephemeral; stop()/start() keeps the port
    double.fail_next_prompt("torch.OutOfMemoryError", "CUDA out of memory", class_type="KSampler")
    await double.stop()

Runnable: `python -m tests.comfy_double --port 8188 [--exec-ms 30] [--root DIR]`.
"""

from .faults import ExecError, Faults
from .server import ComfyDouble, RecordedRequest

__all__ = ["ComfyDouble", "ExecError", "Faults", "RecordedRequest"]
