"""What a webhook body may carry: URLs always, inline base64 only up to a size cap.

A webhook is a copy of the answer for a backend's callback endpoint; POSTing it again on
every retry with hundreds of MB of base64 would tie up the worker's memory and the
receiver's. So above COMFY_BRIDGE_WEBHOOK_MAX_INLINE_BYTES of inline outputs in all, each
output entry goes without its `data` (with `data_omitted: true`, as do outputs streamed
from disk into the answer, whose data is never held); S3 outputs carry their
`url` and `s3_key` either way, and spooled ones their `spool_key`. A caller who wants big
outputs by webhook sends them to S3.
"""

from __future__ import annotations

from typing import Any


def capped(payload: dict[str, Any], max_inline_bytes: int) -> dict[str, Any]:
    """`payload` with inline `data` dropped from its outputs when they total over the cap."""
    outputs = payload.get("output")
    if not isinstance(outputs, list):
        return payload
    entries = [o for o in outputs if isinstance(o, dict)]
    inline = [o for o in entries if o.get("data")]
    # An inline output streamed from disk (delivery/stream.py) never had its data in the body.
    streamed = [o for o in entries if o.get("bytes") and not (o.get("data") or o.get("url") or o.get("upload_error"))]
    total = sum(int(o.get("bytes") or 0) for o in inline)
    drop = {id(o) for o in streamed + (inline if total > max_inline_bytes else [])}
    if not drop:
        return payload
    trimmed = [
        {**{k: v for k, v in o.items() if k != "data"}, "data_omitted": True} if id(o) in drop else o
        for o in outputs
    ]
    return {**payload, "output": trimmed}
