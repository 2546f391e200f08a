"""What a ComfyUI `execution_error` means for the worker: a dead CUDA context, out of memory, or neither.

ComfyUI reports a node's exception in its `execution_error` event (comfy_bridge/comfyui/events.py
reads it); the job runner (comfy_bridge/jobs/serving.py) asks `classify_execution_error` whether
to replace the worker (`mark_fatal`), free memory and retry once, or answer a plain 500.
"""

from __future__ import annotations

import re
from typing import Literal

# Errors after which this process's CUDA context is unusable: every later kernel fails too,
# so the worker must be replaced (mark_fatal), not retried. Matched case-insensitively.
_CUDA_FATAL = re.compile(
    r"device-side assert|illegal memory access|illegal instruction|misaligned address"
    r"|unspecified launch failure|uncorrectable ECC error|cudaErrorLaunchFailure"
    r"|CUDA error: unknown error|GPU is lost|CUBLAS_STATUS_EXECUTION_FAILED",
    re.IGNORECASE,
)
# Out of memory: free models/cache (POST /free) and retry once; a later OOM is a 500.
_OUT_OF_MEMORY = re.compile(
    r"OutOfMemoryError|out of memory|Allocation on device|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDNN_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)

ExecutionErrorKind = Literal["cuda_fatal", "out_of_memory"]


def classify_execution_error(
    exception_type: str | None, exception_message: str | None
) -> ExecutionErrorKind | None:
    """Sort a ComfyUI `execution_error` (its exception_type and exception_message fields):
    "cuda_fatal" (call `mark_fatal`), "out_of_memory" (free and retry), or None (the
    node's own failure, a plain 500)."""
    text = f"{exception_type or ''}: {exception_message or ''}"
    if _CUDA_FATAL.search(text):
        return "cuda_fatal"
    if _OUT_OF_MEMORY.search(text):
        return "out_of_memory"
    return None
