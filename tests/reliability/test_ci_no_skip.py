"""CI never passes by skipping: with CI=true a missing SeaweedFS or Docker engine fails
the tests that need it (with the reason), where a laptop only skips them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.io import seaweed
from tests.provision import test_docker_image
from tests.support import service_missing


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_seaweedfs(ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(seaweed, "weed_binary", lambda: None)
    with pytest.raises(outcome, match="SeaweedFS `weed` not installed"):
        seaweed.seaweed_or_skip(tmp_path)


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_docker(ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(test_docker_image.shutil, "which", lambda name: None)
    with pytest.raises(outcome, match="no docker client"):
        test_docker_image.require_docker()  # what the image fixture does first


def test_ci_failure_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dockerd did not answer.*CI=true"):
        service_missing("no Docker engine: dockerd did not answer within 60 s")
