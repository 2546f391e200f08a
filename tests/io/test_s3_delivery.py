"""S3 delivery against a real S3 server (SeaweedFS): uploads, presigned URLs, failures."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from comfy_bridge.delivery import choice
from comfy_bridge.delivery.base import guess_mimetype
from comfy_bridge.delivery.inline import InlineDestination
from comfy_bridge.delivery.s3 import S3Destination
from comfy_bridge.delivery.spool import Spool
from comfy_bridge.errors import DeliveryFailed
from comfy_bridge.schemas.job import JobInput
from tests.io.conftest import REGION, s3_env
from tests.io.helpers import file_artifact, png_bytes, random_bytes

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def job(**fields) -> JobInput:
    return JobInput.model_validate({"workflow_json": GRAPH, **fields})


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


@pytest.fixture
async def destinations():
    made: list[S3Destination] = []

    def make(settings, **kw) -> S3Destination:
        d = S3Destination(settings, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.aclose()


async def test_upload_every_kind_with_presigned_download(seaweed, make_settings, destinations, tmp_path):
    bucket = seaweed.bucket("outputs")
    settings = make_settings(s3=s3_env(seaweed, bucket, prefix="gen/"))
    out = tmp_path / "comfy" / "output"
    png = png_bytes()
    artifacts = [
        file_artifact(out, "img_00001_.png", png),
        file_artifact(out, "anim_00001_.webp", random_bytes(3000)),
        file_artifact(out, "clip_00001_.mp4", random_bytes(5000), node_id="12", output_type="gifs"),
        file_artifact(out, "sound_00001_.wav", random_bytes(700), node_id="13", output_type="audio"),
        file_artifact(out, "mesh_00001_.glb", random_bytes(900), node_id="14", output_type="3d"),
    ]
    expected = {a.filename: a.read_bytes() for a in artifacts}
    request = job(request_id="req-up")
    outputs = await destinations(settings).deliver(request, artifacts)

    assert [o.filename for o in outputs] == list(expected)
    mimetypes = {o.filename: o.mimetype for o in outputs}
    assert mimetypes == {
        "img_00001_.png": "image/png",
        "anim_00001_.webp": "image/webp",
        "clip_00001_.mp4": "video/mp4",
        "sound_00001_.wav": guess_mimetype("x.wav"),  # audio/wav or audio/x-wav by platform
        "mesh_00001_.glb": "model/gltf-binary",
    }
    s3 = seaweed.client()
    for o in outputs:
        assert o.s3_key == f"gen/req-up/{request.run_id}/{o.filename}"
        assert o.bytes == len(expected[o.filename]) and o.data is None and o.upload_error is None
        assert "X-Amz-Signature=" in o.url and "X-Amz-Expires=600" in o.url
        assert await download(o.url) == expected[o.filename]
        assert s3.head_object(Bucket=bucket, Key=o.s3_key)["ContentType"] == mimetypes[o.filename]
    # Delivered files leave ComfyUI's output folder.
    assert not any(out.iterdir())


async def test_request_credentials_and_bucket_override_environment(seaweed, make_settings, destinations, tmp_path):
    seaweed.bucket("env-bucket")
    own = seaweed.bucket("own-bucket")
    settings = make_settings(s3={"endpoint_url": seaweed.endpoint, "bucket_name": "env-bucket",
                                 "access_key_id": "wrong", "secret_access_key": "wrong"})
    request_s3 = {"access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key,
                  "bucket_name": own, "prefix": "p/q", "region": REGION}
    art = file_artifact(tmp_path / "o", "a.png", png_bytes())
    request = job(request_id="r1", s3=request_s3)
    [out] = await destinations(settings).deliver(request, [art])
    assert out.s3_key == f"p/q/r1/{request.run_id}/a.png"
    assert seaweed.client().get_object(Bucket=own, Key=out.s3_key)["Body"].read() == png_bytes()


async def test_two_runs_of_one_request_id_keep_their_own_objects(seaweed, make_settings, destinations, tmp_path):
    """A resend after the first run ended must not overwrite the object the first answer's URL
    points to (issue 10 item 3): each run has its own key."""
    bucket = seaweed.bucket("outputs")
    destination = destinations(make_settings(s3=s3_env(seaweed, bucket)))
    red, blue = png_bytes(color=(255, 0, 0)), png_bytes(color=(0, 0, 255))
    [first] = await destination.deliver(job(request_id="twice"), [file_artifact(tmp_path / "a", "o_00001_.png", red)])
    [second] = await destination.deliver(job(request_id="twice"), [file_artifact(tmp_path / "b", "o_00001_.png", blue)])
    assert first.s3_key != second.s3_key
    assert first.s3_key.startswith("twice/") and second.s3_key.startswith("twice/")
    assert await download(first.url) == red and await download(second.url) == blue


async def test_converted_to_webp_before_upload(seaweed, make_settings, destinations, tmp_path):
    bucket = seaweed.bucket("outputs")
    settings = make_settings(s3=s3_env(seaweed, bucket))
    art = file_artifact(tmp_path / "o", "x_00001_.png", png_bytes(64, 64))
    [out] = await destinations(settings).deliver(
        job(request_id="conv", output={"format": "webp", "quality": 80}), [art]
    )
    assert out.filename == "x_00001_.webp" and out.mimetype == "image/webp"
    body = await download(out.url)
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"
    assert not art.path.exists()


async def test_large_file_goes_multipart(seaweed, make_settings, destinations, tmp_path):
    bucket = seaweed.bucket("outputs")
    settings = make_settings(s3=s3_env(seaweed, bucket, multipart_threshold_bytes=5 * 1024 * 1024))
    data = random_bytes(12 * 1024 * 1024 + 123)
    art = file_artifact(tmp_path / "o", "big.mp4", data, output_type="videos")
    [out] = await destinations(settings).deliver(job(request_id="big"), [art])
    head = seaweed.client().head_object(Bucket=bucket, Key=out.s3_key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 3 parts of 5 MiB
    assert hashlib.sha256(await download(out.url)).digest() == hashlib.sha256(data).digest()


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def test_wrong_credentials_fail_fast_with_outputs_kept(seaweed, make_settings, destinations, tmp_path, caplog):
    bucket = seaweed.bucket("outputs")
    secret = "not-the-secret-9f8e7d"
    settings = make_settings(
        s3=s3_env(seaweed, bucket, secret_access_key=secret, retries=3, retry_backoff_s=30.0),
        max_inline_bytes=1024 * 1024,
    )
    small, big = png_bytes(), random_bytes(2 * 1024 * 1024)
    arts = [file_artifact(tmp_path / "o", "s.png", small), file_artifact(tmp_path / "o", "b.mp4", big)]
    caplog.set_level(logging.DEBUG, logger="comfy_bridge")
    with pytest.raises(DeliveryFailed) as info:
        # retry_backoff_s=30 would make a retried permanent error hang the test: it is not retried.
        await destinations(settings).deliver(job(request_id="creds"), arts)
    err = info.value
    assert err.status == 502 and err.retriable
    outputs = err.details["output"]
    assert [o["filename"] for o in outputs] == ["s.png", "b.mp4"]
    assert all("SignatureDoesNotMatch" in o["upload_error"] for o in outputs)
    assert base64.b64decode(outputs[0]["data"]) == small  # under max_inline_bytes: inline
    assert "data" not in outputs[1]  # over it: only on the spool
    spool = Path(settings.spool_dir)
    assert [o["spool_key"].rsplit("/", 1)[1] for o in outputs] == ["s.png", "b.mp4"]
    assert (spool / outputs[0]["spool_key"]).read_bytes() == small
    assert (spool / outputs[1]["spool_key"]).read_bytes() == big
    body = json.dumps({"error": err.to_dict()})
    assert_no_secrets(body + caplog.text, secret, seaweed.secret_key)


async def test_missing_bucket_is_a_502_naming_it(seaweed, make_settings, destinations, tmp_path):
    settings = make_settings(s3=s3_env(seaweed, "no-such-bucket-here"))
    art = file_artifact(tmp_path / "o", "a.png", png_bytes())
    with pytest.raises(DeliveryFailed) as info:
        await destinations(settings).deliver(job(request_id="nb"), [art])
    [out] = info.value.details["output"]
    assert "NoSuchBucket" in out["upload_error"]
    assert "no-such-bucket-here" in info.value.message
    assert base64.b64decode(out["data"]) == png_bytes()


async def test_server_killed_mid_upload_retries_then_keeps_outputs(own_seaweed, make_settings, destinations, tmp_path, caplog):
    bucket = own_seaweed.bucket("outputs")
    settings = make_settings(
        s3=s3_env(own_seaweed, bucket, retries=2, retry_backoff_s=0.05, multipart_threshold_bytes=5 * 1024 * 1024),
        max_inline_bytes=64 * 1024 * 1024,
    )
    data = random_bytes(16 * 1024 * 1024)
    art = file_artifact(tmp_path / "o", "movie.mp4", data, output_type="videos")
    killed: list[int] = []

    def kill_on_first_bytes(key: str, sent: int) -> None:
        if not killed:
            killed.append(sent)
            os.kill(own_seaweed.process.pid, signal.SIGKILL)

    caplog.set_level(logging.WARNING, logger="comfy_bridge")
    with pytest.raises(DeliveryFailed) as info:
        await destinations(settings, progress=kill_on_first_bytes).deliver(job(request_id="killed"), [art])
    assert killed
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2  # retries=2: three attempts in all
    [out] = info.value.details["output"]
    assert out["upload_error"] and out["bytes"] == len(data)
    assert hashlib.sha256(base64.b64decode(out["data"])).digest() == hashlib.sha256(data).digest()
    assert out["spool_key"].startswith("killed/") and out["spool_key"].endswith("/movie.mp4")
    assert (Path(settings.spool_dir) / out["spool_key"]).read_bytes() == data
    assert not art.path.exists()


async def test_request_endpoint_on_private_address_is_refused(make_settings, destinations, tmp_path):
    settings = make_settings(allow_private_urls=False)
    art = file_artifact(tmp_path / "o", "a.png", png_bytes())
    request_s3 = {"endpoint_url": "http://127.0.0.1:9", "bucket_name": "abc",
                  "access_key_id": "k", "secret_access_key": "s"}
    with pytest.raises(DeliveryFailed) as info:
        await destinations(settings).deliver(job(request_id="ssrf", s3=request_s3), [art])
    assert "not a public address" in info.value.details["output"][0]["upload_error"]


def test_pick_chooses_s3_or_inline(make_settings):
    env = make_settings(s3={"bucket_name": "env-bucket"})
    none = make_settings()
    assert isinstance(choice.pick(job(), none), InlineDestination)
    first = choice.pick(job(), env)
    assert isinstance(first, S3Destination) and choice.pick(job(), env) is first  # shared clients
    assert isinstance(choice.pick(job(return_outputs_as_base64=True), env), InlineDestination)
    assert isinstance(choice.pick(job(s3={"bucket_name": "mine"}), none), S3Destination)


async def test_spool_budget_evicts_oldest_requests(tmp_path):
    spool = Spool(tmp_path / "spool", budget_bytes=2500)
    for i, rid in enumerate(["old", "mid", "new"]):
        art = file_artifact(tmp_path / "src", f"f{i}.bin", b"x" * 1000)
        assert await spool.keep(rid, art) is not None
        os.utime(tmp_path / "spool" / rid, (i, i))  # order by age, without sleeping
    assert spool.requests() == ["mid", "new"] and spool.usage() <= 2500
    too_big = file_artifact(tmp_path / "src", "huge.bin", b"x" * 3000)
    assert await spool.keep("huge", too_big) is None
