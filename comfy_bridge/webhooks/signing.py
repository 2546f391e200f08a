"""Standard Webhooks signatures (https://www.standardwebhooks.com) of webhook bodies.

Headers sent with every webhook, per the Standard Webhooks specification, signed with
the `standardwebhooks` package:

    webhook-id:        <request_id>.<event type>, the same on every retry of a message
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>
    X-Webhook-Attempt: <1, 2, ...> (not in the spec: which try this is)

Secrets: the spec's form `whsec_<base64 of the key>` is used as the spec says. Any other
secret (the plain strings this worker took before) is used as its UTF-8 bytes, so an
existing secret `s` keeps working: a receiver verifies with `Webhook(s.encode())` in
Python, or, in any language's Standard Webhooks library, with `whsec_` + base64(s),
which is the same key (`whsec_form`). The timestamp and id are inside the signed bytes,
so a captured delivery cannot be replayed later: receivers reject timestamps older than
five minutes and deduplicate on `webhook-id`. Without a secret (none in the request nor
COMFY_BRIDGE_WEBHOOK_SECRET) no signature header is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timezone

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

SIGNATURE_HEADER = "webhook-signature"
TIMESTAMP_HEADER = "webhook-timestamp"
ID_HEADER = "webhook-id"
ATTEMPT_HEADER = "X-Webhook-Attempt"
_PREFIX = "whsec_"


def key(secret: str) -> bytes:
    """The HMAC key of a secret: decoded from `whsec_<base64>`, else the string's bytes."""
    if secret.startswith(_PREFIX):
        return base64.b64decode(secret[len(_PREFIX):] + "==")
    return secret.encode()


def whsec_form(secret: str) -> str:
    """The `whsec_` form of any secret, for a receiver's Standard Webhooks library."""
    return secret if secret.startswith(_PREFIX) else _PREFIX + base64.b64encode(secret.encode()).decode()


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The webhook-signature value (`v1,<base64>`) for these raw bytes."""
    when = datetime.fromtimestamp(int(timestamp), tz=timezone.utc)
    return Webhook(key(secret)).sign(msg_id, when, body.decode())


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Receiver side: True when the Standard Webhooks signature in `headers` matches the
    raw `body` and its timestamp is within five minutes (the library's own check)."""
    try:
        Webhook(key(secret)).verify(body, dict(headers), json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True
