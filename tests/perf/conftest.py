"""The perf tests use the bridge tests' double and bridge fixtures (tests/bridge/conftest.py)."""

from tests.bridge.conftest import bridge, double  # noqa: F401 - fixtures
