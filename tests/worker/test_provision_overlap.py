"""The models step runs while ComfyUI starts: its report is shown, a failure names itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from comfy_bridge.errors import ComfyUnrecoverable
from worker.provision_overlap import ModelsProvisioning


def _step(script: str) -> ModelsProvisioning:
    step = ModelsProvisioning(Path("models_manifest.toml"), Path("/nonexistent/ComfyUI"))
    assert step.argv[-2:] == ["--only", "models"]
    step.argv = [sys.executable, "-c", script]
    return step


async def test_success_is_awaited_and_its_report_shown(capsys) -> None:
    step = _step("print('models: sd_xl_base_1.0.safetensors ok')")
    step.start()
    await step.wait()
    await step.wait()  # waiting again is fine (the lifecycle may re-enter)
    assert "sd_xl_base_1.0.safetensors ok" in capsys.readouterr().out


async def test_failure_errors_with_the_last_lines() -> None:
    step = _step("import sys; print('checkpoints/x.safetensors: sha256 mismatch'); sys.exit(3)")
    with pytest.raises(ComfyUnrecoverable) as info:
        await step.wait()
    assert "exit 3" in info.value.message and "sha256 mismatch" in info.value.message


async def test_the_real_command_fails_clearly_on_a_missing_manifest(tmp_path: Path) -> None:
    step = ModelsProvisioning(tmp_path / "no-such-manifest.toml", tmp_path / "ComfyUI")
    with pytest.raises(ComfyUnrecoverable) as info:
        await step.wait()
    assert "provisioning the models failed" in info.value.message
