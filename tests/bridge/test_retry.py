"""The one retry policy (comfy_bridge/retry.py): attempts, which errors retry, the cap,
full jitter, the deadline, cancellation, and a log line per retry keyed by request_id."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from comfy_bridge import logs
from comfy_bridge.retry import RetryPolicy


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


async def run(policy: RetryPolicy, errors: list[BaseException]) -> int:
    calls = 0
    async for attempt in policy.retrying():
        with attempt:
            calls += 1
            if errors:
                raise errors.pop(0)
    return calls


async def test_retries_until_success_within_attempts():
    policy = RetryPolicy(first_s=0.001, cap_s=0.001, attempts=4)
    assert await run(policy, [Flaky(), Flaky(), Flaky()]) == 4


async def test_gives_up_after_attempts_with_the_last_error():
    policy = RetryPolicy(first_s=0.001, cap_s=0.001, attempts=3)
    errors: list[BaseException] = [Flaky("1"), Flaky("2"), Flaky("3"), Flaky("4")]
    with pytest.raises(Flaky, match="3"):
        await run(policy, errors)
    assert len(errors) == 1


async def test_only_the_errors_it_is_told_retry():
    policy = RetryPolicy(first_s=0.001, cap_s=0.001, attempts=5, retry_on=lambda e: isinstance(e, Flaky))
    errors: list[BaseException] = [Flaky(), Fatal(), Flaky()]
    with pytest.raises(Fatal):
        await run(policy, errors)
    assert len(errors) == 1


async def test_cancellation_is_never_retried():
    policy = RetryPolicy(first_s=0.001, cap_s=0.001, attempts=5)
    with pytest.raises(asyncio.CancelledError):
        await run(policy, [asyncio.CancelledError()])


def test_full_jitter_capped():
    policy = RetryPolicy(first_s=1.0, cap_s=4.0)
    for retry, high in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (100, 4.0)]:
        waits = [policy.delay(retry) for _ in range(200)]
        assert all(0.0 <= w <= high for w in waits)
        assert min(waits) < high / 4  # full jitter: from zero, not around the exponential value


async def test_deadline_stops_before_a_wait_would_pass_it():
    policy = RetryPolicy(first_s=10.0, cap_s=10.0, deadline_s=0.0)
    errors: list[BaseException] = [Flaky(), Flaky()]
    with pytest.raises(Flaky):
        await run(policy, errors)
    assert len(errors) == 1  # one try, no wait that would end past the deadline


async def test_sleep_never_passes_the_deadline():
    policy = RetryPolicy(first_s=60.0, cap_s=60.0)
    assert await policy.sleep(3, deadline=time.monotonic() - 1) == 0.0


class Lines(logging.Handler):
    """Formats each record as it is logged (the bound request_id is read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_each_retry_logged_with_request_id():
    handler = Lines()
    logger = logging.getLogger("comfy_bridge.retry")
    logger.addHandler(handler)
    counted: list[BaseException] = []
    policy = RetryPolicy(first_s=0.001, cap_s=0.001, attempts=3, what="upload of a.png",
                         describe=lambda e: "described", on_retry=counted.append)
    try:
        with logs.bind(request_id="req-retry"):
            assert await run(policy, [Flaky("secret-detail"), Flaky()]) == 3
    finally:
        logger.removeHandler(handler)
    lines = [e for e in handler.lines if "upload of a.png" in e["msg"]]
    assert ["attempt 1 of 3" in lines[0]["msg"], "attempt 2 of 3" in lines[1]["msg"]] == [True, True]
    assert all(e["request_id"] == "req-retry" and e["level"] == "warning" for e in lines)
    assert all("described" in e["msg"] and "secret-detail" not in e["msg"] for e in lines)
    assert len(lines) == len(counted) == 2
