"""Required classes vs /object_info, and check-workflow's named problems."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiohttp import web

from comfy_bridge.errors import ComfyIncomplete
from comfy_bridge.provision.manifest import (
    DEFAULT_MANIFEST,
    load_manifest,
    parse_manifest,
)
from comfy_bridge.provision.pack_hints import PackIndex
from comfy_bridge.provision.verify import check_graph, startup_check, verify_object_info
from comfy_bridge.provision.workflow_files import read_workflow
from tests.provision.conftest import REPO_ROOT

SAMPLERS = ["euler", "dpmpp_2m", "res_2s", "res_3s"]
SCHEDULERS = ["normal", "karras", "beta57", "bong_tangent"]


def object_info(*, res4lyf: bool = True, ckpts=("sd_xl_base_1.0.safetensors",)) -> dict:
    """A trimmed /object_info in ComfyUI v0.3.64's shape."""
    samplers = SAMPLERS if res4lyf else SAMPLERS[:2]
    schedulers = SCHEDULERS if res4lyf else SCHEDULERS[:2]
    info = {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [list(ckpts), {}]}},
                                   "output": ["MODEL", "CLIP", "VAE"]},
        "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
                           "output": ["CONDITIONING"]},
        "EmptyLatentImage": {"input": {"required": {"width": ["INT", {"default": 1024, "min": 16, "max": 16384}],
                                                    "height": ["INT", {"default": 1024, "min": 16, "max": 16384}],
                                                    "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
                             "output": ["LATENT"]},
        "KSampler": {"input": {"required": {
            "model": ["MODEL", {}], "seed": ["INT", {"min": 0, "max": 2**64 - 1}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}],
            "sampler_name": [samplers, {}], "scheduler": ["COMBO", {"options": schedulers}],
            "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}]}}, "output": ["LATENT"]},
        "VAEDecode": {"input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}}, "output": ["IMAGE"]},
        "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}},
                      "output": []},
    }
    if res4lyf:
        for cls in ("ClownsharKSampler_Beta", "SharkSampler_Beta", "ClownsharkChainsampler_Beta", "ClownSampler_Beta"):
            info[cls] = {"input": {"required": {}}, "output": ["LATENT"]}
    return info


def bench_graph() -> dict:
    return json.loads((REPO_ROOT / "workflows/benchmark_sdxl.json").read_text())


def test_everything_present_is_ok():
    report = verify_object_info(object_info(), load_manifest(DEFAULT_MANIFEST),
                                {"t.json": read_workflow(bench_graph())})
    assert report.ok and report.missing == [] and report.checked_classes >= 10


def test_pack_that_failed_to_import_is_named_with_its_classes_and_samplers():
    manifest = load_manifest(DEFAULT_MANIFEST)
    graph = bench_graph()
    graph["3"]["class_type"] = "ClownsharKSampler_Beta"

    report = verify_object_info(object_info(res4lyf=False), manifest, {"res.json": read_workflow(graph)})

    assert not report.ok
    (missing,) = report.missing
    assert missing.pack == "RES4LYF" and missing.in_manifest
    assert missing.classes == ["ClownSampler_Beta", "ClownsharKSampler_Beta", "ClownsharkChainsampler_Beta",
                               "SharkSampler_Beta"]
    assert missing.samplers == ["res_2s", "res_3s", "beta57", "bong_tangent"]
    assert missing.needed_by == ["template res.json"]
    message = report.message
    assert "pack RES4LYF" in message and "IMPORT FAILED" in message and "ClownsharKSampler_Beta" in message
    err = report.error()
    assert isinstance(err, ComfyIncomplete) and err.status == 503 and err.to_dict()["missing"][0]["pack"] == "RES4LYF"


def test_unknown_and_known_packs_for_template_classes():
    manifest = load_manifest(DEFAULT_MANIFEST)
    wf = {"1": {"class_type": "FaceDetailer", "inputs": {}}, "2": {"class_type": "VHS_VideoCombine", "inputs": {}},
          "3": {"class_type": "TotallyCustomNode", "inputs": {}}}

    report = verify_object_info(object_info(), manifest, {"denrisi.json": read_workflow(wf)})

    by_pack = {m.pack: m for m in report.missing}
    assert by_pack["ComfyUI-Impact-Pack"].classes == ["FaceDetailer"] and not by_pack["ComfyUI-Impact-Pack"].in_manifest
    assert by_pack["ComfyUI-VideoHelperSuite"].repo == "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite"
    assert by_pack[None].classes == ["TotallyCustomNode"]
    assert "unknown pack: missing TotallyCustomNode" in report.message


def test_benchmark_problems_are_part_of_the_startup_report():
    manifest = load_manifest(DEFAULT_MANIFEST)
    report = verify_object_info(object_info(ckpts=()), manifest, {}, benchmark=("b.json", read_workflow(bench_graph())))
    assert not report.ok
    assert [p.kind for p in report.problems] == ["missing_model"]
    assert "sd_xl_base_1.0.safetensors" in report.message and "run comfy-worker provision" in report.message


def test_check_graph_names_each_kind_of_problem():
    manifest = load_manifest(DEFAULT_MANIFEST)
    g = bench_graph()
    g["4"]["inputs"]["ckpt_name"] = "juggernaut.safetensors"
    g["3"]["inputs"]["sampler_name"] = "res_5s"
    g["3"]["inputs"]["scheduler"] = "beta57"
    g["3"]["inputs"]["steps"] = 0
    g["3"]["inputs"]["cfg"] = "lots"
    del g["5"]["inputs"]["width"]
    g["8"]["inputs"]["vae"] = ["99", 0]
    g["9"]["inputs"]["images"] = ["6", 0]
    g["10"] = {"class_type": "Image Blend", "inputs": {}}

    problems = check_graph(g, object_info(res4lyf=False), PackIndex(manifest), manifest)

    by = {(p.node_id, p.input): p for p in problems}
    model = by[("4", "ckpt_name")]
    assert model.kind == "missing_model" and model.folder == "checkpoints"
    assert 'dest = "checkpoints/juggernaut.safetensors"' in model.message
    assert by[("3", "sampler_name")].kind == "invalid_value" and "'res_5s'" in by[("3", "sampler_name")].message
    sched = by[("3", "scheduler")]
    assert sched.kind == "invalid_value" and sched.pack == "RES4LYF" and "did it fail to import" in sched.message
    assert "below the minimum 1" in by[("3", "steps")].message
    assert "not a number" in by[("3", "cfg")].message
    assert by[("5", "width")].kind == "missing_input"
    assert by[("8", "vae")].kind == "bad_link" and "node 99" in by[("8", "vae")].message
    assert "expects IMAGE" in by[("9", "images")].message and "CONDITIONING" in by[("9", "images")].message
    blend = by[("10", None)]
    assert blend.kind == "missing_class" and blend.pack == "was-node-suite-comfyui"
    assert "uncomment its [[custom_nodes]] block" in blend.message


def test_ui_format_workflows_yield_class_types():
    ui = {"nodes": [{"id": 1, "type": "KSampler"}, {"id": 2, "type": "Reroute"}, {"id": 3, "type": "Note"},
                    {"id": 4, "type": "Power Lora Loader (rgthree)"}], "links": []}
    shape = read_workflow(ui)
    assert shape.ui_format and shape.api is None
    assert shape.class_types == ["KSampler", "Power Lora Loader (rgthree)"]
    wrapped = read_workflow({"input": {"workflow_json": bench_graph()}})
    assert wrapped.api is not None and "KSampler" in wrapped.class_types


async def serve_object_info(info: dict) -> tuple[web.AppRunner, str]:
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(info)

    app.router.add_get("/object_info", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def check_workflow_cli(path, url, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "check-workflow", str(path), "--comfyui-url", url, *extra,
        cwd=REPO_ROOT, env=dict(os.environ), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_check_workflow_cli(tmp_path):
    runner, url = await serve_object_info(object_info(res4lyf=False))
    try:
        good = tmp_path / "good.json"
        good.write_text(json.dumps(bench_graph()))
        code, out, _ = await check_workflow_cli(good, url)
        assert code == 0 and "OK against ComfyUI" in out

        g = bench_graph()
        g["3"]["class_type"] = "ClownsharKSampler_Beta"
        g["11"] = {"class_type": "FaceDetailer", "inputs": {}}
        g["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
        bad = tmp_path / "denrisi.json"
        bad.write_text(json.dumps(g))
        code, out, _ = await check_workflow_cli(bad, url)
        out = " ".join(out.split())
        assert code == 1
        assert "missing class node 11: class FaceDetailer is not installed; pack ComfyUI-Impact-Pack" in out
        assert "class ClownsharKSampler_Beta is not installed; pack RES4LYF (in the manifest)" in out
        assert "missing model node 4 (CheckpointLoaderSimple) input ckpt_name: model file 'missing.safetensors'" \
            in out
        assert "ComfyUI-Impact-Pack: https://github.com/ltdrdata/ComfyUI-Impact-Pack" in out

        code, out, _ = await check_workflow_cli(bad, url, "--json")
        body = json.loads(out)
        assert code == 1 and {p["kind"] for p in body["problems"]} == {"missing_class", "missing_model"}

        code, _, err = await check_workflow_cli(bad, "http://127.0.0.1:9")
        assert code == 2 and "cannot reach ComfyUI" in err
        (tmp_path / "junk.json").write_text("[1, 2]")
        code, _, err = await check_workflow_cli(tmp_path / "junk.json", url)
        assert code == 2 and "not a ComfyUI workflow" in err
    finally:
        await runner.cleanup()


async def test_check_workflow_against_the_comfy_double(comfy_double, tmp_path):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64,
                                                                           "batch_size": 1, "color": 0}},
                              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                                          "filename_prefix": "x"}},
                              "3": {"class_type": "ClownsharKSampler_Beta", "inputs": {}}}))
    code, out, _ = await check_workflow_cli(wf, comfy_double.url)
    assert code == 1 and "ClownsharKSampler_Beta" in out and "EmptyImage" not in out


async def test_startup_check_reads_benchmark_and_templates(tmp_path):
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf/t.json").write_text(json.dumps({"1": {"class_type": "rgthree_missing", "inputs": {}}}))
    (tmp_path / "wf/t.params.json").write_text(json.dumps({"parameters": {}}))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(bench_graph()))
    manifest = parse_manifest(DEFAULT_MANIFEST.read_text().replace('workflow = "workflows/benchmark_sdxl.json"',
                                                                   f'workflow = "{bench}"'))
    report = await startup_check("http://unused", manifest, workflows_dir=tmp_path / "wf",
                                 object_info=object_info())
    assert not report.ok
    assert [(m.pack, m.classes, m.needed_by) for m in report.missing] == [
        (None, ["rgthree_missing"], ["template t.json"])]


def test_raise_if_incomplete_for_the_workers_readiness_check(tmp_path):
    from comfy_bridge.provision.verify import raise_if_incomplete

    assert raise_if_incomplete(object_info(), DEFAULT_MANIFEST).ok
    try:
        raise_if_incomplete(object_info(res4lyf=False), DEFAULT_MANIFEST, workflows_dir=REPO_ROOT / "workflows")
    except ComfyIncomplete as err:
        assert "pack RES4LYF" in err.message and "ClownsharKSampler_Beta" in err.message
    else:
        raise AssertionError("expected ComfyIncomplete")
