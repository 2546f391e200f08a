"""Small helpers shared by the fault tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable


def describe(status: int, body: Any) -> tuple[str, str]:
    """(status cell, body cell) for the table: the error's type and retriable flag."""
    if status == 200 and isinstance(body, dict):
        return "200", f"success, {len(body.get('output') or [])} output(s)"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(status), f"{err.get('type')}, retriable={str(err.get('retriable')).lower()}"
    return str(status), repr(body)[:80]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll an async predicate until truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 1] + "…"
