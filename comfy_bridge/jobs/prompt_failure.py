"""The error a prompt that failed in ComfyUI answers with: interrupted, out of memory, fatal GPU, or a node's own.

Sorting the exception is comfy_bridge/comfyui/failures.py's; this turns a failed
`PromptResult` into the BridgeError the job runner (comfy_bridge/jobs/serving.py) raises
or, for out of memory, retries after POST /free.
"""

from __future__ import annotations

from comfy_bridge import logs
from comfy_bridge.comfyui.client import PromptResult
from comfy_bridge.comfyui.failures import classify_execution_error
from comfy_bridge.errors import BridgeError, ExecutionFailed, OutOfMemory

log = logs.get(__name__)


def prompt_failure(result: PromptResult, oom_retries: int) -> BridgeError:
    """The error a failed prompt answers with, from its `execution_error` or
    `execution_interrupted` event; a fatal CUDA error's has `fatal=True` in its details."""
    failure = result.failure
    assert failure is not None
    data = failure.data
    node_id, node_type = data.get("node_id"), data.get("node_type")
    if failure.type == "execution_interrupted":
        return ExecutionFailed(
            f"ComfyUI interrupted the prompt at node {node_id} ({node_type}) before it finished",
            prompt_id=result.prompt_id, node_id=node_id, node_type=node_type, interrupted=True,
        )
    exc_type = str(data.get("exception_type") or "")
    message = str(data.get("exception_message") or "").strip()
    where = f"node {node_id} ({node_type})" if node_id is not None else "a node"
    details = dict(prompt_id=result.prompt_id, node_id=node_id, node_type=node_type,
                   exception_type=exc_type or None)
    kind = classify_execution_error(exc_type, message)
    if kind == "out_of_memory":
        return OutOfMemory(
            f"{where} ran out of GPU memory after {oom_retries} retry(ies) with "
            f"models unloaded: {message} (lower the resolution or batch size)",
            **details,
        )
    if kind == "cuda_fatal":
        log.error("fatal CUDA error: %s", message)
        return ExecutionFailed(
            f"{where} hit a fatal GPU error ({message}); this worker is being replaced, "
            "retry the request", fatal=True, retriable=True, **details,
        )
    log.warning("execution error at %s: %s: %s", where, exc_type, message)
    return ExecutionFailed(f"{where} raised {exc_type or 'an error'}: {message}", **details)
