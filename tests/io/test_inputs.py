"""Input staging: every accepted form, every bad form, limits and the address guard."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from aiohttp import web

from comfy_bridge.errors import InvalidInputImage
from comfy_bridge.inputs import InputStager
from comfy_bridge.schemas.job import JobInput
from tests.io.conftest import REGION, free_port, s3_env
from tests.io.helpers import png_bytes

GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}}}
PNG = png_bytes(16, 16, (10, 200, 10))


def job(images: list[dict], **fields) -> JobInput:
    return JobInput.model_validate({"request_id": "req-in", "workflow_json": GRAPH, "images": images, **fields})


@pytest.fixture
async def stagers():
    made: list[InputStager] = []

    def make(settings, client=None) -> InputStager:
        s = InputStager(settings, client)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose()


@pytest.fixture
async def image_server(http_server):
    """Serves PNG at /face.png, a redirect, a 404, oversized bodies and a server that hangs."""
    never = asyncio.Event()

    async def face(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/face.png")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404)

    async def big_declared(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000, content_type="image/png")

    async def big_streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"x" * 1000)
        await resp.write_eof()
        return resp

    async def hang(_: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    yield await http_server({
        "/face.png": face, "/go": redirect, "/missing.png": missing,
        "/big.png": big_declared, "/stream.png": big_streamed, "/hang.png": hang,
    })
    never.set()  # let a hanging handler finish so the server stops at once


async def test_every_form_is_staged_under_the_request(seaweed, make_settings, stagers, image_server, tmp_path):
    bucket = seaweed.bucket("inputs")
    seaweed.client().put_object(Bucket=bucket, Key="in/face.png", Body=PNG)
    settings = make_settings(s3=s3_env(seaweed, "unused-bucket"), s3_input_buckets=[bucket])
    stager = stagers(settings)
    images = [
        {"name": "b64.png", "image": base64.b64encode(PNG).decode()},
        {"name": "urlsafe.png", "image": base64.urlsafe_b64encode(PNG).decode().rstrip("=")},
        {"name": "uri.png", "image": "data:image/png;base64," + base64.b64encode(PNG).decode()},
        {"name": "url.png", "image": image_server + "/face.png"},
        {"name": "redirected.png", "image": image_server + "/go"},
        {"name": "s3.png", "image": f"s3://{bucket}/in/face.png"},
        {"name": "clip.mp4", "image": base64.b64encode(b"\x00\x00\x00\x18ftypmp42 not checked").decode()},
    ]
    request = job(images)
    staged = await stager.stage(request)
    folder = tmp_path / "comfy" / "input" / "cvw" / "req-in" / request.run_id
    assert staged == {i["name"]: f"cvw/req-in/{request.run_id}/{i['name']}" for i in images}
    for name in staged:
        if name.endswith(".png"):
            assert (folder / name).read_bytes() == PNG
    await stager.cleanup(request)
    assert not folder.exists() and not folder.parent.exists()


async def test_s3_input_with_request_credentials(seaweed, make_settings, stagers):
    bucket = seaweed.bucket("inputs")
    seaweed.client().put_object(Bucket=bucket, Key="k/face.png", Body=PNG)
    settings = make_settings()  # nothing from the environment
    s3 = {"endpoint_url": seaweed.endpoint, "access_key_id": seaweed.access_key,
          "secret_access_key": seaweed.secret_key, "region": REGION}
    request = job([{"name": "face.png", "image": f"s3://{bucket}/k/face.png"}], s3=s3)
    staged = await stagers(settings).stage(request)
    assert staged == {"face.png": f"cvw/req-in/{request.run_id}/face.png"}


async def test_upload_through_comfyui_when_its_folder_is_unknown(make_settings, stagers):
    calls = []

    class Client:
        async def upload_image(self, data, name, subfolder="", overwrite=True):
            calls.append((data, name, subfolder, overwrite))
            return f"{subfolder}/{name}"

    settings = make_settings(comfyui_path=None)
    request = job([{"name": "face.png", "image": base64.b64encode(PNG).decode()}])
    staged = await stagers(settings, Client()).stage(request)
    assert staged == {"face.png": f"cvw/req-in/{request.run_id}/face.png"}
    assert calls == [(PNG, "face.png", f"cvw/req-in/{request.run_id}", True)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64 at all!!", "not valid base64"),
        ("data:image/png,rawtext", "without ;base64"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        (b64(b"this is not a png"), "not an image"),
        (b64(b"x" * 3000), "over the 2048 byte limit"),
        ("", None),
    ],
    ids=["base64", "data-uri-plain", "data-uri-garbage", "not-an-image", "too-large", "empty"],
)
async def test_bad_inline_forms_get_422_naming_the_image(make_settings, stagers, value, reason):
    stager = stagers(make_settings(max_input_image_bytes=2048))
    images = [{"name": "ok.png", "image": b64(PNG)}, {"name": "bad.png", "image": value or "===="}]
    with pytest.raises(InvalidInputImage) as info:
        await stager.stage(job(images))
    err = info.value
    assert err.status == 422 and err.details["name"] == "bad.png" and "bad.png" in err.message
    if reason:
        assert reason in err.message


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.png", "HTTP 404"),
        ("/big.png", "over the 2048 byte limit"),
        ("/stream.png", "over the 2048 byte limit"),
        ("/hang.png", "within 0.5 s"),
    ],
    ids=["404", "too-large-declared", "too-large-streamed", "timeout"],
)
async def test_bad_urls_get_422(make_settings, stagers, image_server, path, reason):
    stager = stagers(make_settings(max_input_image_bytes=2048, input_fetch_timeout_s=0.5))
    with pytest.raises(InvalidInputImage) as info:
        await stager.stage(job([{"name": "u.png", "image": image_server + path}]))
    assert info.value.details["name"] == "u.png" and reason in info.value.message


async def test_unreachable_url_gets_422(make_settings, stagers):
    url = f"http://127.0.0.1:{free_port()}/x.png"
    with pytest.raises(InvalidInputImage, match="could not be fetched"):
        await stagers(make_settings()).stage(job([{"name": "u.png", "image": url}]))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/face.png",
        "http://localhost:{port}/face.png",
        "http://[::1]:{port}/face.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/face.png",
        "http://[::ffff:127.0.0.1]:{port}/face.png",
    ],
    ids=["loopback", "name-to-loopback", "ipv6-loopback", "link-local", "private", "v4-mapped"],
)
async def test_private_addresses_refused_unless_allowed(make_settings, stagers, image_server, url):
    port = image_server.rsplit(":", 1)[1]
    stager = stagers(make_settings(allow_private_urls=False))
    with pytest.raises(InvalidInputImage, match="refused: .*not a public address|refused: .*non-public address"):
        await stager.stage(job([{"name": "p.png", "image": url.format(port=port)}]))


async def test_redirect_to_private_address_refused(make_settings, stagers, http_server):
    # The first hop is allowed only because allow_private_urls is on for loopback; the check
    # on each hop is what matters: a redirect to a link-local literal is refused either way.
    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    base = await http_server({"/hop": hop})
    stager = stagers(make_settings(allow_private_urls=False))
    with pytest.raises(InvalidInputImage, match="refused: .*not a public address|refused: .*non-public address"):
        await stager.stage(job([{"name": "p.png", "image": base + "/hop"}]))


@pytest.mark.parametrize(
    ("key", "reason"),
    [("missing/face.png", "NoSuchKey"), ("", "not a valid s3://bucket/key")],
    ids=["missing-key", "no-key"],
)
async def test_bad_s3_inputs_get_422(seaweed, make_settings, stagers, key, reason):
    bucket = seaweed.bucket("inputs")
    stager = stagers(make_settings(s3=s3_env(seaweed, bucket)))
    with pytest.raises(InvalidInputImage) as info:
        await stager.stage(job([{"name": "s.png", "image": f"s3://{bucket}/{key}"}]))
    assert reason in info.value.message


async def test_s3_input_with_wrong_credentials_never_shows_them(seaweed, make_settings, stagers):
    bucket = seaweed.bucket("inputs")
    secret = "wrong-secret-5a4b3c"
    stager = stagers(make_settings(s3=s3_env(seaweed, bucket, secret_access_key=secret)))
    with pytest.raises(InvalidInputImage) as info:
        await stager.stage(job([{"name": "s.png", "image": f"s3://{bucket}/in/face.png"}]))
    assert "SignatureDoesNotMatch" in info.value.message
    assert secret not in str(info.value.to_dict())


async def test_count_limit_and_duplicate_names(make_settings, stagers):
    stager = stagers(make_settings(max_input_images=2))
    three = [{"name": f"{i}.png", "image": b64(PNG)} for i in range(3)]
    with pytest.raises(InvalidInputImage, match="at most 2") as info:
        await stager.stage(job(three))
    assert info.value.details["name"] == "2.png"
    with pytest.raises(InvalidInputImage, match="used twice"):
        await stager.stage(job([three[0], three[0]]))


async def test_inputs_of_two_requests_do_not_meet(make_settings, stagers, tmp_path):
    stager = stagers(make_settings())
    red, blue = png_bytes(color=(255, 0, 0)), png_bytes(color=(0, 0, 255))
    a = JobInput.model_validate({"request_id": "a", "workflow_json": GRAPH, "images": [{"name": "x.png", "image": b64(red)}]})
    b = JobInput.model_validate({"request_id": "b", "workflow_json": GRAPH, "images": [{"name": "x.png", "image": b64(blue)}]})
    sa, sb = await asyncio.gather(stager.stage(a), stager.stage(b))
    root: Path = tmp_path / "comfy" / "input"
    assert (root / sa["x.png"]).read_bytes() == red and (root / sb["x.png"]).read_bytes() == blue


async def test_two_runs_of_one_request_id_keep_their_own_inputs(make_settings, stagers, tmp_path):
    """A resend starting while the first run is cleaned up must keep its inputs (issue 10 item 3)."""
    stager = stagers(make_settings())
    red, blue = png_bytes(color=(255, 0, 0)), png_bytes(color=(0, 0, 255))
    first = job([{"name": "x.png", "image": b64(red)}])
    second = job([{"name": "x.png", "image": b64(blue)}])
    sa = await stager.stage(first)
    sb = await stager.stage(second)
    root: Path = tmp_path / "comfy" / "input"
    assert sa["x.png"] != sb["x.png"]
    await stager.cleanup(first)
    assert not (root / sa["x.png"]).exists()
    assert (root / sb["x.png"]).read_bytes() == blue
    await stager.cleanup(second)
    assert not (root / "cvw" / "req-in").exists()
