"""models_manifest.toml: the default file is valid, and every kind of mistake is named."""

from __future__ import annotations

import pytest

from comfy_bridge.errors import ManifestInvalid
from comfy_bridge.provision.manifest import (
    DEFAULT_MANIFEST,
    load_manifest,
    parse_manifest,
)
from comfy_bridge.provision.pack_hints import commented_packs

GOOD_COMFY = '[comfyui]\nversion = "v0.3.64"\ncommit = "a125cd84b054a57729b5eecab930ca9408719832"\n'
SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(text)
    return err.value.details["problems"]


def test_default_manifest_pins_what_works_together():
    m = load_manifest(DEFAULT_MANIFEST)
    assert m.comfyui.version == "v0.3.64"
    assert m.comfyui.commit == "a125cd84b054a57729b5eecab930ca9408719832"
    (res4lyf,) = m.custom_nodes
    assert res4lyf.name == "RES4LYF" and res4lyf.ref == "7750bf7800b6ad9d670308a09989fc0c04c40cec"
    assert "kornia" in res4lyf.pip and "ClownsharKSampler_Beta" in res4lyf.provides
    (sdxl,) = m.models
    assert sdxl.url == ("https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                        "sd_xl_base_1.0.safetensors")
    assert (sdxl.sha256, sdxl.size, sdxl.auth) == (SHA, 6938078334, "hf")
    assert sdxl.folder == "checkpoints" and sdxl.filename == "sd_xl_base_1.0.safetensors"
    bench = m.benchmark_path()
    assert bench is not None and bench.exists()


def test_default_manifest_ships_commented_packs_a_few_lines_from_enabled():
    packs = {p.name: p for p in commented_packs(DEFAULT_MANIFEST.read_text())}
    assert {"ComfyUI-Impact-Pack", "rgthree-comfy", "ComfyUI_essentials", "was-node-suite-comfyui"} <= set(packs)
    assert all(len(p.ref) == 40 and p.provides for p in packs.values())


def test_minimal_manifest_and_defaults():
    m = parse_manifest(GOOD_COMFY)
    assert m.custom_nodes == [] and m.models == [] and m.benchmark is None
    assert m.comfyui.repo.endswith("ComfyUI")
    assert parse_manifest(GOOD_COMFY.replace('"v0.3.64"', '"0.3.64"')).comfyui.version == "v0.3.64"


def test_toml_syntax_error_has_a_line_number():
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(GOOD_COMFY + "[[models]\n")
    assert "not valid TOML" in err.value.message and "line 4" in err.value.message


def test_missing_comfyui_section():
    assert problems("") == ["comfyui: required"]


def test_model_errors_name_the_entry_and_the_field():
    text = GOOD_COMFY + """
[[models]]
url = "ftp://example.com/x"
dest = "../etc/passwd"
sha256 = "abc"
size = 0
auth = "github"
"""
    found = problems(text)
    assert any(p.startswith("models[0] (../etc/passwd).url: url must be http(s)") for p in found)
    assert any(p.startswith("models[0] (../etc/passwd).dest: dest must be a relative path") for p in found)
    assert any(p.startswith("models[0] (../etc/passwd).sha256: sha256 must be 64 hex") for p in found)
    assert any(p.startswith("models[0] (../etc/passwd).size:") for p in found)
    assert any(p.startswith("models[0] (../etc/passwd).auth:") and "'hf'" in p for p in found)


def test_model_dest_needs_a_folder():
    text = GOOD_COMFY + f'[[models]]\nurl = "https://x/y"\ndest = "y.safetensors"\nsha256 = "{SHA}"\nsize = 1\n'
    assert problems(text) == ["models[0] (y.safetensors).dest: dest must be folder/filename "
                              "(e.g. checkpoints/y.safetensors), got 'y.safetensors'"]


def test_custom_node_ref_must_be_a_commit_and_pip_entries_cannot_be_options():
    text = GOOD_COMFY + """
[[custom_nodes]]
name = "RES4LYF"
repo = "https://github.com/ClownsharkBatwing/RES4LYF"
ref = "main"
pip = ["--index-url=https://evil.example"]
"""
    found = problems(text)
    assert any("custom_nodes[0] (RES4LYF).ref: ref must be a commit hash" in p and "pin the commit" in p
               for p in found)
    assert any(p.startswith("custom_nodes[0] (RES4LYF).pip:") for p in found)


def test_unknown_key_suggests_the_right_one():
    text = GOOD_COMFY + '[[custom_nodes]]\nname = "a"\nrepo = "https://x/a"\nref = "abcdef1"\nprovide = ["X"]\n'
    assert problems(text) == ["custom_nodes[0] (a).provide: unknown key (did you mean 'provides'?)"]


def test_duplicates_are_refused():
    pack = '[[custom_nodes]]\nname = "a"\nrepo = "https://x/a"\nref = "abcdef1"\n'
    model = f'[[models]]\nurl = "https://x/y"\ndest = "loras/y.safetensors"\nsha256 = "{SHA}"\nsize = 1\n'
    found = problems(GOOD_COMFY + pack + pack + model + model)
    assert found == ["manifest: duplicate custom_nodes name: a"]
    assert problems(GOOD_COMFY + model + model) == ["manifest: duplicate models dest: loras/y.safetensors"]


def test_several_problems_are_reported_together_in_the_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[comfyui]\nversion = "latest"\ncommit = "HEAD"\n')
    with pytest.raises(ManifestInvalid) as err:
        load_manifest(path)
    assert str(path) in err.value.message and "2 problem(s)" in err.value.message
    assert "comfyui.version: version must look like v0.3.64" in err.value.message
    assert "comfyui.commit: commit must be a commit hash" in err.value.message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ManifestInvalid) as err:
        load_manifest(tmp_path / "nope.toml")
    assert "no such manifest file" in err.value.message
