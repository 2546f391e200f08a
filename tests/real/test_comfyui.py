"""The fixture itself, against ComfyUI directly: it starts, sees its custom nodes and our checkpoint."""

from __future__ import annotations

from typing import Any

import pytest

from tests.real import graphs
from tests.real.direct import run_prompt
from tests.real.launcher import RealComfy


def test_starts_on_cpu_with_its_folders_under_the_temp_base(real_comfy: RealComfy) -> None:
    stats = real_comfy.get_json("/system_stats")
    assert [d["type"] for d in stats["devices"]] == ["cpu"]
    argv = stats["system"]["argv"]
    assert "--cpu" in argv
    assert argv[argv.index("--output-directory") + 1] == str(real_comfy.base / "output")
    assert argv[argv.index("--input-directory") + 1] == str(real_comfy.base / "input")


def test_lists_the_random_checkpoint(real_comfy: RealComfy) -> None:
    assert graphs.SD15 in real_comfy.get_json("/models/checkpoints")


def test_res4lyf_loads_and_adds_its_samplers(real_comfy: RealComfy, object_info: dict[str, Any]) -> None:
    if not (real_comfy.comfyui_path / "custom_nodes" / "RES4LYF").is_dir():
        pytest.skip("RES4LYF is not in this ComfyUI's custom_nodes/")
    assert not [f for f in real_comfy.import_failures() if "RES4LYF" in f], real_comfy.import_failures()
    assert "ClownsharKSampler_Beta" in object_info
    required = object_info["KSampler"]["input"]["required"]
    assert "res_2s" in required["sampler_name"][0]
    assert "beta57" in required["scheduler"][0]


def test_weightless_prompt_runs_directly(real_comfy: RealComfy) -> None:
    run = run_prompt(real_comfy, graphs.weightless(batch=2), timeout_s=60)
    assert run.status == 200, run.answer
    assert "execution_success" in run.types()
    assert run.history is not None
    images = run.history["outputs"]["3"]["images"]
    assert len(images) == 2
    for image in images:
        assert (real_comfy.base / "output" / image["subfolder"] / image["filename"]).is_file()
