"""Fixtures of the bridge tests: a fresh ComfyUI double and a bridge app in front of it."""

from __future__ import annotations

import pytest

from tests.comfy_double import ComfyDouble
from tests.support import PNG_MAGIC, Bridge, free_port, save_graph  # noqa: F401 - re-exported for the tests here


@pytest.fixture
async def double(comfy_double: ComfyDouble) -> ComfyDouble:
    """The shared double (tests/conftest.py), fresh for each test."""
    return comfy_double


@pytest.fixture
async def bridge(double: ComfyDouble, make_bridge) -> Bridge:
    """A bridge that reads outputs from the double's folder (the production fast path)."""
    return await make_bridge(double.url, double.root)
