"""Structured JSON logs keyed by request_id, with secrets scrubbed.

`bind(request_id=..., prompt_id=...)` sets context for everything logged in the
current task; the formatter writes one JSON object per line so Vast's console and any
log shipper can filter by request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})

# Values that must never reach a log line, whatever the message says.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(secret_access_key|access_key_id|secret|token|signature|authorization|api_key|password|mtoken)(\"?\s*[:=]\s*\"?)([^\s\",}&]+)"),
    re.compile(r"(?i)(X-Amz-Signature=|X-Amz-Credential=|Signature=|Credential=|\bsig:)([^&\s\"]+)"),
]


def redact(text: str) -> str:
    out = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}***", out)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_context.get())
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Scrub the whole line: structured fields can carry secrets as much as messages.
        return redact(json.dumps(entry, default=str))


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger (ours and the PyWorker framework's) through the JSON formatter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
