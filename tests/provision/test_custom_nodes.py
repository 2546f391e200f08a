"""Custom node packs from local git repositories, pinned, with requirements, idempotent."""

from __future__ import annotations

from comfy_bridge.provision.custom_nodes import STATE_FILE, ensure_packs
from comfy_bridge.provision.manifest import CustomNodePack
from tests.provision.conftest import git, make_pack_repo, read_calls, stub_python


def pack(repo, ref: str, **kw) -> CustomNodePack:
    return CustomNodePack(name=kw.pop("name", "FakePack"), repo=str(repo), ref=ref, **kw)


def head(path) -> str:
    return git(path, "rev-parse", "HEAD")


async def test_clones_at_the_pinned_commit_and_installs_requirements_with_comfyuis_python(tmp_path):
    repo, (first, second) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"], requirements="numpy\n")
    py, calls = stub_python(tmp_path)
    nodes = tmp_path / "ComfyUI/custom_nodes"

    reports = await ensure_packs([pack(repo, first, pip=["kornia"])], nodes, str(py))

    assert [(r.name, r.status) for r in reports] == [("FakePack", "installed")]
    assert head(nodes / "FakePack") == first  # the pin, not the branch tip
    (call,) = read_calls(calls)
    assert call["argv"][:3] == ["-m", "pip", "install"]
    assert str(nodes / "FakePack/requirements.txt") in call["argv"] and "kornia" in call["argv"]
    assert call["constraints"] == "torch==2.5.1+cu124\n"  # a pack cannot swap ComfyUI's torch
    assert (nodes / STATE_FILE).exists()
    assert sorted(p.name for p in nodes.iterdir()) == [STATE_FILE, "FakePack"]  # nothing else ComfyUI would import
    assert not (tmp_path / "ComfyUI/.comfy-worker-clones").exists()


async def test_second_run_changes_nothing(tmp_path):
    repo, (first, _) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"], requirements="numpy\n")
    py, calls = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"
    await ensure_packs([pack(repo, first)], nodes, str(py))
    mtime = (nodes / "FakePack/__init__.py").stat().st_mtime_ns

    reports = await ensure_packs([pack(repo, first)], nodes, str(py))

    assert [r.status for r in reports] == ["ok"]
    assert len(read_calls(calls)) == 1
    assert (nodes / "FakePack/__init__.py").stat().st_mtime_ns == mtime


async def test_short_ref_and_moving_the_pin(tmp_path):
    repo, (first, second) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"])
    py, calls = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"
    await ensure_packs([pack(repo, first[:7])], nodes, str(py))
    assert head(nodes / "FakePack") == first

    check = await ensure_packs([pack(repo, second)], nodes, str(py), check_only=True)
    assert check[0].status == "wrong_commit" and head(nodes / "FakePack") == first

    reports = await ensure_packs([pack(repo, second)], nodes, str(py))
    assert reports[0].status == "updated" and head(nodes / "FakePack") == second


async def test_a_pack_with_local_changes_is_not_touched(tmp_path):
    repo, (first, second) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"])
    py, _ = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"
    await ensure_packs([pack(repo, first)], nodes, str(py))
    (nodes / "FakePack/__init__.py").write_text("# patched by hand\n")

    reports = await ensure_packs([pack(repo, second)], nodes, str(py))

    assert reports[0].status == "dirty" and "local changes" in reports[0].detail
    assert (nodes / "FakePack/__init__.py").read_text() == "# patched by hand\n"


async def test_folder_that_is_not_a_checkout_is_reported(tmp_path):
    repo, (first, _) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"])
    py, _ = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"
    (nodes / "FakePack").mkdir(parents=True)

    reports = await ensure_packs([pack(repo, first)], nodes, str(py))

    assert reports[0].status == "not_git" and "not a git checkout" in reports[0].detail


async def test_unreachable_repo_and_unknown_commit_leave_nothing_behind(tmp_path):
    repo, _ = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"])
    py, calls = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"

    reports = await ensure_packs([pack(tmp_path / "nowhere", "abcdef1", name="Gone"),
                                  pack(repo, "0123456789abcdef0123456789abcdef01234567", name="NoSuchCommit")],
                                 nodes, str(py))

    assert [r.status for r in reports] == ["failed", "failed"]
    assert "git" in reports[0].detail
    assert sorted(p.name for p in nodes.iterdir()) == []
    assert read_calls(calls) == []


async def test_pip_failure_names_the_pack_and_is_retried_next_run(tmp_path):
    repo, (first, _) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"], requirements="nonexistent-package\n")
    (tmp_path / "bad").mkdir()
    bad_py, _ = stub_python(tmp_path / "bad", fail=True)
    nodes = tmp_path / "custom_nodes"

    reports = await ensure_packs([pack(repo, first)], nodes, str(bad_py))
    assert reports[0].status == "failed" and "No matching distribution" in reports[0].detail

    good_py, calls = stub_python(tmp_path)
    reports = await ensure_packs([pack(repo, first)], nodes, str(good_py))
    assert reports[0].status == "installed" and len(read_calls(calls)) == 1


async def test_check_only_changes_nothing(tmp_path):
    repo, (first, _) = make_pack_repo(tmp_path, "FakePack", ["FakeSampler"])
    py, calls = stub_python(tmp_path)
    nodes = tmp_path / "custom_nodes"

    reports = await ensure_packs([pack(repo, first)], nodes, str(py), check_only=True)

    assert reports[0].status == "missing"
    assert not nodes.exists() and read_calls(calls) == []
