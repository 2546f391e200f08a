"""Units that predict time: model families from the checkpoint, and the per-shape
correction learned from measured execution times (bounded, persisted, logged)."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest

from tests.support import json_logs
from worker.model_family import ModelFamilies, family_from_keys
from worker.shape_correction import FILE_NAME, ShapeCorrections, shape_key
from worker.workload import WorkloadModel

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def graph(ckpt: str = "sd_xl_base_1.0.safetensors", w: int = 1024, h: int = 1024, sampler: str = "euler",
          batch: int = 1, steps: int = 20) -> dict:
    g = json.loads((WORKFLOWS / "benchmark_sdxl.json").read_text())
    g["3"]["inputs"].update(sampler_name=sampler, steps=steps)
    g["5"]["inputs"].update(width=w, height=h, batch_size=batch)
    g["4"]["inputs"]["ckpt_name"] = ckpt
    return g


def safetensors(path: Path, keys: list[str]) -> Path:
    header = json.dumps({k: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]} for k in keys}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    return path


SD15_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"]
SDXL_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
             "conditioner.embedders.1.model.ln_final.weight"]


def test_family_comes_from_the_checkpoint_header_then_its_name(tmp_path: Path) -> None:
    assert family_from_keys(SD15_KEYS) == "sd15" and family_from_keys(SDXL_KEYS) == "sdxl"
    assert family_from_keys(["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]) == "flux"
    safetensors(tmp_path / "checkpoints" / "mystery_a.safetensors", SD15_KEYS)
    safetensors(tmp_path / "checkpoints" / "sub" / "mystery_b.safetensors", SDXL_KEYS)
    families = ModelFamilies([tmp_path])
    assert families.warm() == 2
    assert families.family("checkpoints", "mystery_a.safetensors") == "sd15"
    assert families.family("checkpoints", "sub/mystery_b.safetensors") == "sdxl"
    assert families.family("checkpoints", "not_here_v1-5.safetensors") == "sd15"  # no file: the name
    assert families.family("checkpoints", "../../etc/passwd") == "unknown"


# ../shared/FACTS.md and the earlier GPU runs (worker/workload.py): seconds per image.
MEASURED = {  # (graph kwargs, H100 FACTS seconds)
    "SD1.5 512 euler": (dict(ckpt="v1-5-pruned-emaonly.safetensors", w=512, h=512), 0.61),
    "SDXL 1024 euler": (dict(), 1.385),
    "SDXL 1024 res_2s": (dict(sampler="res_2s"), 3.55),
}


@pytest.mark.parametrize("name", list(MEASURED))
def test_units_predict_measured_times_within_25_percent_of_the_sdxl_benchmark(name: str) -> None:
    model = WorkloadModel()
    bench_units, bench_s = model.graph_units(graph()), MEASURED["SDXL 1024 euler"][1]
    kwargs, seconds = MEASURED[name]
    predicted = model.graph_units(graph(**kwargs)) / bench_units * bench_s
    assert predicted == pytest.approx(seconds, rel=0.25)


def test_correction_learns_per_shape_bounded_persisted_and_logged(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    corrections = ShapeCorrections(path)
    model = WorkloadModel(corrections=corrections)
    g = graph()
    base = model.graph_units(g)
    assert corrections.observe(g, base, 5.0) is None  # no benchmark yet: nothing to compare with
    corrections.seconds_per_unit = 0.05
    with json_logs() as logs:
        first = corrections.observe(g, base, 2 * base * 0.05)  # the first of a shape may include a load
        factors = [model.observe(g, 100 * base * 50.0) or corrections.factor(g) for _ in range(30)]  # ms: 100x
    assert first is None
    assert factors[-1] == pytest.approx(4.0, rel=1e-3) and max(factors) <= 4.0  # measured 100x, bounded at 4
    assert model.graph_units(g) == pytest.approx(base * 4.0, rel=1e-3)
    moved = [json.loads(line) for line in logs.getvalue().splitlines() if "workload correction moved" in line]
    assert moved and moved[-1]["to"] == pytest.approx(4.0, rel=0.1)

    other_prompt = copy.deepcopy(g)
    other_prompt["3"]["inputs"]["seed"] += 1
    for node in other_prompt.values():
        if "text" in node["inputs"]:
            node["inputs"]["text"] = "a different prompt"
    assert shape_key(other_prompt) == shape_key(g)  # prompts and seeds are not the shape
    assert shape_key(graph(steps=30)) != shape_key(g) and model.graph_units(graph(steps=30)) == pytest.approx(31)

    corrections.save()
    again = ShapeCorrections(path)
    assert again.factor(g) == pytest.approx(corrections.factor(g))


def test_unreadable_state_file_starts_without_corrections(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    assert ShapeCorrections(path).factor(graph()) == 1.0


def test_family_is_found_through_loras_and_model_patches() -> None:
    g = graph(ckpt="v1-5-pruned-emaonly.safetensors", w=512, h=512)
    g["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    g["21"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["20", 0], "sampling": "eps", "zsnr": False}}
    g["3"]["inputs"]["model"] = ["21", 0]
    assert WorkloadModel().graph_units(g) == pytest.approx(1 + 20 * 0.25 * 1.65)
