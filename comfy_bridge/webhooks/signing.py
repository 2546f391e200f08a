"""HMAC-SHA256 signatures of webhook bodies, and how a receiver checks them.

Headers sent with every webhook:

    X-Webhook-Timestamp: <unix seconds>
    X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
    X-Webhook-Id:        <request_id>
    X-Webhook-Attempt:   <1, 2, ...>

The timestamp is inside the signed bytes so a captured delivery cannot be replayed
later: a receiver recomputes the HMAC over the raw body it received (before parsing
JSON), compares in constant time, and rejects timestamps older than a few minutes.
Without a secret (none in the request nor COMFY_BRIDGE_WEBHOOK_SECRET) no signature
header is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
ID_HEADER = "X-Webhook-Id"
ATTEMPT_HEADER = "X-Webhook-Attempt"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Webhook-Signature value for these raw bytes."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Receiver side: True when the signature matches and the timestamp is recent."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)
