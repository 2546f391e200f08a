"""The workload model: units follow the work a graph makes the GPU do."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from worker.workload import WorkloadModel, model_calls_per_step

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
m = WorkloadModel()


def sdxl(sampler: str = "euler", steps: int = 20, w: int = 1024, h: int = 1024, batch: int = 1, cfg: float = 7.0) -> dict:
    g = json.loads((WORKFLOWS / "benchmark_sdxl.json").read_text())
    g["3"]["inputs"].update(sampler_name=sampler, steps=steps, cfg=cfg)
    g["5"]["inputs"].update(width=w, height=h, batch_size=batch)
    return g


def sampler_part(graph: dict) -> float:
    return m.graph_units(graph) - m.request_units


def test_sdxl_euler_is_steps_times_megapixels_plus_the_request_constant():
    assert m.graph_units(sdxl()) == pytest.approx(1 + 20)


def test_res4lyf_multistage_costs_its_stages_plus_their_overhead_per_step():
    # Measured: res_2s SDXL = 2.6x euler (H100, FACTS.md), 2.34-2.39x (H200, bench/gpu_check.sh).
    assert sampler_part(sdxl("res_2s")) == pytest.approx(2.5 * sampler_part(sdxl("euler")))
    assert sampler_part(sdxl("res_3s")) == pytest.approx(3.75 * sampler_part(sdxl("euler")))
    assert m.graph_units(sdxl("res_2s")) / m.graph_units(sdxl("euler")) == pytest.approx(51 / 21)
    assert sampler_part(sdxl("heun")) == pytest.approx(2 * sampler_part(sdxl("euler")))  # core: calls only


def test_batch_area_and_steps_scale_linearly():
    base = sampler_part(sdxl())
    assert sampler_part(sdxl(batch=4)) == pytest.approx(4 * base)
    assert sampler_part(sdxl(w=512, h=512)) == pytest.approx(base / 4)
    assert sampler_part(sdxl(steps=40)) == pytest.approx(2 * base)


def test_cfg_1_skips_the_negative_pass():
    assert sampler_part(sdxl(cfg=1.0)) == pytest.approx(sampler_part(sdxl()) / 2)


@pytest.mark.parametrize(
    ("name", "calls"),
    [("euler", 1), ("dpmpp_2m", 1), ("heun", 2), ("dpmpp_sde", 2), ("dpmpp_2s_ancestral", 2),
     ("res_2s", 2), ("res_3s", 3), ("res_2m", 1), ("exponential/res_2s", 2), ("multistep/res_3m", 1),
     ("exponential/res_3s_non-monotonic", 3), ("hybrid/pec423_2h2s", 2), ("linear/rk5_7s", 7),
     ("fully_implicit/gauss-legendre_4s_alt", 4), ("seeds_3", 3), (None, 1), ("something_new", 1)],
)
def test_model_calls_per_step(name, calls):
    assert model_calls_per_step(name) == calls


def test_res4lyf_clownshark_sampler_reads_steps_to_run_and_its_method():
    g = sdxl()
    ks = g.pop("3")
    g["3"] = {"class_type": "ClownsharKSampler_Beta", "inputs": {
        "eta": 0.5, "sampler_name": "exponential/res_2s", "scheduler": "beta57", "steps": 30,
        "steps_to_run": -1, "denoise": 1.0, "cfg": 5.5, "seed": 0, "sampler_mode": "standard",
        "bongmath": True, "model": ks["inputs"]["model"], "positive": ks["inputs"]["positive"],
        "negative": ks["inputs"]["negative"], "latent_image": ["5", 0]}}
    assert sampler_part(g) == pytest.approx(30 * 2 * 1.25)
    g["3"]["inputs"]["steps_to_run"] = 10
    assert sampler_part(g) == pytest.approx(10 * 2 * 1.25)


def test_shark_sampler_takes_its_method_from_the_linked_sampler_node():
    g = sdxl()
    g["3"] = {"class_type": "SharkSampler_Beta", "inputs": {
        "steps": 20, "steps_to_run": -1, "denoise": 1.0, "cfg": 6.0, "sampler": ["20", 0],
        "latent_image": ["5", 0], "model": ["4", 0]}}
    g["20"] = {"class_type": "ClownSamplerAdvanced_Beta", "inputs": {"sampler_name": "res_3s", "eta": 0.5}}
    assert sampler_part(g) == pytest.approx(20 * 3 * 1.25)


def test_sampler_custom_advanced_reads_scheduler_steps_sampler_and_guider():
    g = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 2}},
        "2": {"class_type": "BasicScheduler", "inputs": {"model": ["9", 0], "scheduler": "simple", "steps": 28, "denoise": 1.0}},
        "3": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "heun"}},
        "4": {"class_type": "BasicGuider", "inputs": {"model": ["9", 0], "conditioning": ["8", 0]}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "6": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["5", 0], "guider": ["4", 0], "sampler": ["3", 0], "sigmas": ["2", 0], "latent_image": ["1", 0]}},
    }
    assert sampler_part(g) == pytest.approx(28 * 1 * 2 * 2 * 0.5)  # steps x MP x batch x heun x no-negative


def test_ksampler_advanced_counts_the_steps_it_runs_and_a_second_pass_at_its_own_size():
    g = sdxl()
    g["3"]["class_type"] = "KSamplerAdvanced"
    g["3"]["inputs"].update(start_at_step=0, end_at_step=10, add_noise="enable", noise_seed=1,
                            return_with_leftover_noise="enable")
    g["3"]["inputs"].pop("seed")
    g["10"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}}
    g["11"] = {"class_type": "KSampler", "inputs": {**sdxl()["3"]["inputs"], "steps": 8, "latent_image": ["10", 0]}}
    assert sampler_part(g) == pytest.approx(10 + 8 * 1.5**2)


def test_video_latent_counts_frames():
    g = {"1": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 480, "length": 81, "batch_size": 1}},
         "2": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 6.0, "sampler_name": "uni_pc",
                                                    "scheduler": "simple", "denoise": 1.0, "latent_image": ["1", 0]}}}
    assert sampler_part(g) == pytest.approx(20 * 832 * 480 / 1024**2 * 21)


def test_linked_primitives_and_unknown_latent_sizes():
    g = sdxl()
    g["30"] = {"class_type": "PrimitiveInt", "inputs": {"value": 10}}
    g["3"]["inputs"]["steps"] = ["30", 0]
    assert sampler_part(g) == pytest.approx(10)
    g["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["31", 0], "vae": ["4", 2]}}
    g["31"] = {"class_type": "LoadImage", "inputs": {"image": "in.png"}}
    assert sampler_part(g) == pytest.approx(10)  # unknown size counts as 1024x1024


def test_graphs_without_samplers_cost_the_request_constant_and_unreadable_ones_the_default():
    weightless = json.loads((WORKFLOWS / "benchmark_weightless.json").read_text())
    assert m.graph_units(weightless) == m.request_units
    for bad in (None, [], "x", {}, {"1": "not a node"}):
        assert m.graph_units(bad) == (m.default_units if not isinstance(bad, dict) or not bad else m.request_units)
    cyclic = sdxl()
    cyclic["5"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "width": 0, "height": 0}}
    assert m.graph_units(cyclic) > 0  # a cycle is bounded, not a crash


def test_payload_units_reads_the_pyworker_payload_and_templates():
    g = sdxl()
    assert m.payload_units({"input": {"workflow_json": g}}) == m.graph_units(g)
    assert m.payload_units({"input": {"workflow": g}}) == m.graph_units(g)
    assert m.payload_units({"input": {"modifier": "x"}}) == m.default_units  # no template store
    assert m.payload_units("nonsense") == m.default_units

    class Store:
        def expand(self, name, mods):
            out = copy.deepcopy(g)
            out["3"]["inputs"]["steps"] = mods["steps"]
            return out

    with_store = WorkloadModel(templates=Store())
    assert with_store.payload_units({"input": {"modifier": "sdxl", "modifications": {"steps": 40}}}) == 1 + 40


def test_the_shipped_templates_are_priced_by_their_graphs():
    for name in ("sdxl_t2i", "sdxl_res4lyf_t2i"):
        graph = json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert m.graph_units(graph) > m.request_units
