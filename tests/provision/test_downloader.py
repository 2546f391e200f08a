"""Model downloads against a local Range-capable host that throttles and injects faults."""

from __future__ import annotations

import json
import logging

import pytest

from comfy_bridge.errors import DownloadFailed
from comfy_bridge.provision import download_progress, downloader, model_state
from comfy_bridge.provision.downloader import DownloadOptions, ensure_models
from comfy_bridge.provision.manifest import ModelFile
from comfy_bridge.provision.model_state import VERIFIED_FILE
from tests.provision.conftest import blob, model_entry, sha256
from tests.provision.model_server import Fault

KIB = 1024


def opts(**kw) -> DownloadOptions:
    base = dict(connections=4, parallel_files=3, min_chunk_bytes=128 * KIB, retries=3, backoff_s=0.01,
                progress_interval_s=0.05, bar=False, env={})
    base.update(kw)
    return DownloadOptions(**base)


def model(server, name: str, data: bytes, dest: str | None = None, **extra) -> ModelFile:
    return ModelFile(**model_entry(server, name, data, dest or f"checkpoints/{name}", **extra))


def leftovers(models_dir) -> list[str]:
    return sorted(p.name for p in models_dir.rglob("*") if p.name.endswith((".part", ".part.json", ".tmp")))


async def test_several_connections_per_file_and_verified_result(model_server, tmp_path):
    data = blob(1024 * KIB, seed=1)
    model_server.files["a.safetensors"] = data
    # Body requests wait until four ranges of the file are in flight at once.
    model_server.hold_until(lambda s: s.active.get("a.safetensors", 0) >= 4)
    m = model(model_server, "a.safetensors", data)

    reports = await ensure_models([m], tmp_path / "models", opts(connections=4))

    assert [r.status for r in reports] == ["downloaded"]
    assert not model_server.hold_timed_out
    assert model_server.peak_active["a.safetensors"] >= 4
    assert (tmp_path / "models/checkpoints/a.safetensors").read_bytes() == data
    assert leftovers(tmp_path / "models") == []
    starts = sorted(r.start for r in model_server.body_requests("a.safetensors"))
    assert len(starts) >= 4 and starts[0] == 0
    verified = json.loads((tmp_path / "models" / VERIFIED_FILE).read_text())
    assert verified["checkpoints/a.safetensors"]["sha256"] == sha256(data)


async def test_several_files_at_once(model_server, tmp_path):
    names = ["x.safetensors", "y.safetensors", "z.safetensors"]
    datas = {n: blob(300 * KIB, seed=i) for i, n in enumerate(names)}
    model_server.files.update(datas)
    model_server.hold_until(lambda s: sum(1 for n in names if s.active.get(n, 0) > 0) >= 3)

    reports = await ensure_models([model(model_server, n, d) for n, d in datas.items()], tmp_path / "m",
                                  opts(connections=2, parallel_files=3))

    assert [r.status for r in reports] == ["downloaded"] * 3
    assert not model_server.hold_timed_out
    assert model_server.peak_files == 3
    for n, d in datas.items():
        assert (tmp_path / "m/checkpoints" / n).read_bytes() == d


async def test_resumes_after_the_server_drops_mid_body(model_server, tmp_path):
    data = blob(1024 * KIB, seed=2)
    model_server.files["b.bin"] = data
    model_server.add_fault("b.bin", Fault(drop_after=200 * KIB, times=2))

    reports = await ensure_models([model(model_server, "b.bin", data, "loras/b.bin")], tmp_path / "m", opts())

    assert reports[0].status == "downloaded"
    assert (tmp_path / "m/loras/b.bin").read_bytes() == data
    chunk = 256 * KIB  # 1 MiB over 4 connections x 4 chunks, at least the 128 KiB minimum
    resumed = [r for r in model_server.body_requests("b.bin") if r.start % chunk != 0]
    assert resumed, "a retried range should start where the dropped one stopped, not at its chunk start"


async def test_resume_across_runs_from_the_part_file(model_server, tmp_path):
    data = blob(1024 * KIB, seed=3)
    model_server.files["c.bin"] = data
    model_server.add_fault("c.bin", Fault(drop_after=300 * KIB, times=1))
    m = model(model_server, "c.bin", data)

    with pytest.raises(DownloadFailed):
        await ensure_models([m], tmp_path / "m", opts(connections=1, retries=0))
    part = tmp_path / "m/checkpoints/c.bin.part"
    state = json.loads(part.with_name("c.bin.part.json").read_text())
    got = sum(state["done"])
    assert got > 0 and part.exists()
    assert not (tmp_path / "m/checkpoints/c.bin").exists()

    check = await ensure_models([m], tmp_path / "m", opts(), check_only=True)
    assert check[0].status == "partial" and check[0].bytes == got

    before = len(model_server.records)
    reports = await ensure_models([m], tmp_path / "m", opts(connections=1))
    assert reports[0].status == "downloaded" and "resumed" in reports[0].detail
    assert (tmp_path / "m/checkpoints/c.bin").read_bytes() == data
    second_run = [r for r in model_server.records[before:] if r.range != "bytes=0-0"]
    assert all(r.start >= got for r in second_run)
    assert sum(r.sent for r in second_run) == len(data) - got
    assert leftovers(tmp_path / "m") == []


async def test_sha256_mismatch_leaves_no_file(model_server, tmp_path):
    data = blob(400 * KIB, seed=4)
    model_server.files["d.bin"] = data
    m = ModelFile(url=model_server.file_url("d.bin"), dest="vae/d.bin", sha256="0" * 64, size=len(data))

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([m], tmp_path / "m", opts())

    assert "sha256 mismatch" in err.value.message and "vae/d.bin" in err.value.message
    assert sha256(data) in err.value.message
    assert not (tmp_path / "m/vae/d.bin").exists()
    assert leftovers(tmp_path / "m") == []


@pytest.mark.parametrize("auth,env_name", [("hf", "HF_TOKEN"), ("civitai", "CIVITAI_TOKEN")])
async def test_401_names_the_token_variable(model_server, tmp_path, auth, env_name):
    data = blob(10 * KIB)
    model_server.files["gated.bin"] = data
    model_server.tokens["gated.bin"] = "right-token"
    m = model(model_server, "gated.bin", data, auth=auth)

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([m], tmp_path / "m", opts(env={}))
    assert env_name in err.value.message and "401" in err.value.message
    assert err.value.details["token_env"] == env_name

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([m], tmp_path / "m", opts(env={env_name: "wrong-token"}))
    assert f"{env_name} is set but" in err.value.message
    assert "wrong-token" not in err.value.message


async def test_token_goes_to_the_manifest_host_only_and_is_never_logged(model_server, tmp_path, caplog):
    data = blob(600 * KIB, seed=5)
    model_server.files["blob.bin"] = data
    # The manifest's host answers with a redirect to another host name (a CDN).
    model_server.redirects["gated.bin"] = model_server.file_url("blob.bin", alt=True)
    m = ModelFile(url=model_server.file_url("gated.bin"), dest="checkpoints/g.bin", sha256=sha256(data),
                  size=len(data), auth="hf")

    caplog.set_level(logging.DEBUG)
    reports = await ensure_models([m], tmp_path / "m", opts(env={"HF_TOKEN": "s3cr3t-hf-token"}))

    assert reports[0].status == "downloaded"
    origin = [r for r in model_server.records if r.name == "gated.bin"]
    cdn = [r for r in model_server.records if r.name == "blob.bin"]
    assert origin and all(r.authorization == "Bearer s3cr3t-hf-token" for r in origin)
    assert cdn and all(r.host == "localhost" and r.authorization is None for r in cdn)
    assert "s3cr3t-hf-token" not in caplog.text


async def test_a_redirect_within_the_origin_keeps_the_token_and_a_loop_is_named(model_server, tmp_path):
    data = blob(100 * KIB, seed=11)
    model_server.files["gated.bin"] = data
    model_server.tokens["gated.bin"] = "s3cr3t"
    model_server.redirects["renamed.bin"] = model_server.file_url("gated.bin")  # same host: a renamed repo
    model_server.redirects["loop.bin"] = model_server.file_url("loop.bin")
    renamed = ModelFile(url=model_server.file_url("renamed.bin"), dest="checkpoints/r.bin", sha256=sha256(data),
                        size=len(data), auth="hf")
    loop = ModelFile(url=model_server.file_url("loop.bin"), dest="checkpoints/l.bin", sha256=sha256(data),
                     size=len(data))

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([renamed, loop], tmp_path / "m", opts(env={"HF_TOKEN": "s3cr3t"}))

    assert err.value.message == "checkpoints/l.bin: too many redirects from " + model_server.url.split("//")[1]
    assert (tmp_path / "m/checkpoints/r.bin").read_bytes() == data


async def test_an_expired_signed_cdn_url_is_resolved_again(model_server, tmp_path):
    data = blob(512 * KIB, seed=10)
    model_server.files["blob.bin"] = data
    model_server.redirects["model.bin"] = model_server.file_url("blob.bin", alt=True)
    model_server.add_fault("blob.bin", Fault(status=403, times=1, body_only=True))
    m = ModelFile(url=model_server.file_url("model.bin"), dest="checkpoints/m.bin", sha256=sha256(data),
                  size=len(data))

    reports = await ensure_models([m], tmp_path / "m", opts(connections=1))

    assert reports[0].status == "downloaded"
    assert [r.name for r in model_server.records].count("model.bin") == 2  # resolved again after the 403


async def test_present_and_verified_files_are_skipped_without_rehashing(model_server, tmp_path, monkeypatch):
    data = blob(200 * KIB, seed=6)
    model_server.files["e.bin"] = data
    m = model(model_server, "e.bin", data)
    await ensure_models([m], tmp_path / "m", opts())
    requests = len(model_server.records)

    hashed: list[object] = []
    real = model_state.sha256_file
    monkeypatch.setattr(model_state, "sha256_file", lambda p: hashed.append(p) or real(p))
    reports = await ensure_models([m], tmp_path / "m", opts())

    assert [r.status for r in reports] == ["ok"]
    assert len(model_server.records) == requests
    assert hashed == []
    rehashed = await ensure_models([m], tmp_path / "m", opts(), rehash=True)
    assert rehashed[0].status == "ok" and len(hashed) == 1


async def test_a_file_put_there_by_hand_is_verified_once_then_trusted(model_server, tmp_path):
    data = blob(100 * KIB, seed=7)
    target = tmp_path / "m/checkpoints/f.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    m = ModelFile(url=model_server.file_url("missing-upstream"), dest="checkpoints/f.bin", sha256=sha256(data),
                  size=len(data))

    reports = await ensure_models([m], tmp_path / "m", opts())

    assert reports[0].status == "ok"
    assert model_server.records == []


async def test_wrong_file_on_disk_is_replaced_and_check_reports_it(model_server, tmp_path):
    data = blob(150 * KIB, seed=8)
    model_server.files["g.bin"] = data
    target = tmp_path / "m/checkpoints/g.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x" * len(data))
    m = model(model_server, "g.bin", data)

    check = await ensure_models([m], tmp_path / "m", opts(), check_only=True)
    assert check[0].status == "wrong_hash"
    assert target.read_bytes() == b"x" * len(data)
    assert model_server.records == []

    reports = await ensure_models([m], tmp_path / "m", opts())
    assert reports[0].status == "downloaded" and target.read_bytes() == data


async def test_server_without_range_support_uses_one_stream(model_server, tmp_path):
    data = blob(700 * KIB, seed=9)
    model_server.files["h.bin"] = data
    model_server.ranges = False

    reports = await ensure_models([model(model_server, "h.bin", data)], tmp_path / "m", opts())

    assert reports[0].status == "downloaded"
    assert (tmp_path / "m/checkpoints/h.bin").read_bytes() == data
    assert len(model_server.body_requests("h.bin")) == 1


async def test_size_changed_upstream_and_404_are_named(model_server, tmp_path):
    data = blob(50 * KIB)
    model_server.files["i.bin"] = data
    wrong = ModelFile(url=model_server.file_url("i.bin"), dest="checkpoints/i.bin", sha256=sha256(data),
                      size=len(data) + 1)
    gone = ModelFile(url=model_server.file_url("nope.bin"), dest="checkpoints/nope.bin", sha256="1" * 64, size=5)

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([wrong, gone], tmp_path / "m", opts())

    msg = err.value.message
    assert "2 model downloads failed" in msg
    assert f"serves {len(data)} bytes" in msg and "pin the url" in msg
    assert "checkpoints/nope.bin: 404" in msg


async def test_transient_server_errors_are_retried(model_server, tmp_path):
    data = blob(64 * KIB)
    model_server.files["j.bin"] = data
    model_server.add_fault("j.bin", Fault(status=503, times=2))

    reports = await ensure_models([model(model_server, "j.bin", data)], tmp_path / "m", opts())

    assert reports[0].status == "downloaded"
    assert [r.status for r in model_server.records[:2]] == [503, 503]


async def test_retries_stop_after_the_configured_number_and_say_so(model_server, tmp_path, caplog):
    data = blob(64 * KIB)
    model_server.files["l.bin"] = data
    model_server.add_fault("l.bin", Fault(status=503, times=10))
    caplog.set_level(logging.WARNING)

    with pytest.raises(DownloadFailed) as err:
        await ensure_models([model(model_server, "l.bin", data)], tmp_path / "m", opts(retries=2))

    assert "reaching the host failed after 3 tries: 503" in err.value.message
    assert [r.status for r in model_server.records] == [503, 503, 503]
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) == 2


async def test_not_enough_disk_space_is_said_before_downloading(model_server, tmp_path, monkeypatch):
    data = blob(64 * KIB)
    model_server.files["k.bin"] = data

    class Usage:
        free = 1000

    monkeypatch.setattr(downloader.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(DownloadFailed) as err:
        await ensure_models([model(model_server, "k.bin", data)], tmp_path / "m", opts())
    assert "free" in err.value.message
    assert model_server.records == []


async def test_progress_shows_a_bar_on_a_terminal_and_logs_elsewhere(caplog):
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    caplog.set_level(logging.INFO)
    progress = download_progress.Progress(interval_s=3600, bar=None, stream=stream)
    assert progress.bar  # a terminal gets the bar
    progress.start("checkpoints/x.safetensors", total=1000, done=0)
    progress.add("checkpoints/x.safetensors", 500)
    progress.log_now()
    assert "50.0%" in stream.getvalue() and "MB/s" in stream.getvalue()
    record = next(r for r in caplog.records if "downloading checkpoints/x.safetensors" in r.getMessage())
    assert record.fields["done"] == 500 and record.fields["total"] == 1000  # type: ignore[attr-defined]
    assert not download_progress.Progress(interval_s=1, bar=None, stream=io.StringIO()).bar  # not a terminal
