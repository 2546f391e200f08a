"""Session-wide fixtures. Feature folders keep their own conftest.py.

`comfy_double`: a started ComfyDouble (tests/comfy_double) on an ephemeral port, closed
after the test. `make_comfy_double(**kwargs)`: the same with constructor options
(exec_ms, models, object_info_extra, history_lag_s, previews, root); all are closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.comfy_double import ComfyDouble


@pytest.fixture
async def make_comfy_double(tmp_path) -> AsyncIterator[Callable[..., Awaitable[ComfyDouble]]]:
    made: list[ComfyDouble] = []

    async def make(**kwargs: Any) -> ComfyDouble:
        kwargs.setdefault("root", tmp_path / f"comfy{len(made)}")
        double = ComfyDouble(**kwargs)
        made.append(double)
        await double.start()
        return double

    yield make
    for double in made:
        await double.close()


@pytest.fixture
async def comfy_double(make_comfy_double) -> ComfyDouble:
    return await make_comfy_double()
