"""What callers cannot make the worker do with S3: read buckets with the worker's own keys
(comfy_bridge/inputs/sources.py allow-list), or reach an address other than the one its
endpoint was checked at (comfy_bridge/net/endpoint.py pinning). Real SeaweedFS."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from typing import Any

import boto3
import pytest
import trustme
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import SSLError
from yarl import URL

from comfy_bridge.net import endpoint
from comfy_bridge.delivery.s3 import S3Destination
from comfy_bridge.errors import InvalidInputImage
from comfy_bridge.inputs import InputStager
from comfy_bridge.schemas.job import JobInput
from tests.io.conftest import REGION, s3_env
from tests.io.helpers import file_artifact, png_bytes

PNG = png_bytes(16, 16, (200, 10, 10))
GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}


@pytest.fixture(autouse=True)
def fresh_resolutions():
    endpoint._resolved.clear()
    yield
    endpoint._resolved.clear()


def job(**fields: Any) -> JobInput:
    return JobInput.model_validate({"request_id": "sec", "workflow_json": GRAPH, **fields})


async def stage(settings, image: str, **fields: Any) -> dict[str, str]:
    stager = InputStager(settings)
    try:
        return await stager.stage(job(images=[{"name": "in.png", "image": image}], **fields))
    finally:
        await stager.aclose()


class _AnyRun(str):
    """`cvw/sec/<run_id>/in.png`: each run stages its inputs in its own folder."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"cvw/sec/[0-9a-f]{12}/in\.png", other) is not None

    __hash__ = str.__hash__


ANY_RUN = _AnyRun("cvw/sec/<run_id>/in.png")


async def test_worker_keys_read_only_allow_listed_buckets(seaweed, make_settings):
    outputs, private = seaweed.bucket("outputs"), seaweed.bucket("operator-private")
    seaweed.client().put_object(Bucket=private, Key="k/in.png", Body=PNG)
    seaweed.client().put_object(Bucket=outputs, Key="k/in.png", Body=PNG)
    settings = make_settings(s3=s3_env(seaweed, outputs))  # the worker's keys can read both buckets
    with pytest.raises(InvalidInputImage) as info:
        await stage(settings, f"s3://{private}/k/in.png")
    assert f"bucket '{private}' is not one the worker reads with its own credentials" in info.value.message
    assert "COMFY_BRIDGE_S3_INPUT_BUCKETS" in info.value.message
    # The default allow-list is the worker's own output bucket.
    assert await stage(settings, f"s3://{outputs}/k/in.png") == {"in.png": ANY_RUN}
    # A caller's own keys read what they can; an operator can allow-list more buckets.
    own = {"access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key}
    assert await stage(settings, f"s3://{private}/k/in.png", s3=own) == {"in.png": ANY_RUN}
    wider = make_settings(s3=s3_env(seaweed, outputs), s3_input_buckets=f"{outputs}, {private}")
    assert await stage(wider, f"s3://{private}/k/in.png") == {"in.png": ANY_RUN}


async def test_request_endpoint_is_resolved_once_and_connected_to_at_that_address(
    seaweed, make_settings, tmp_path, monkeypatch
):
    """A rebinding DNS: the first answer (the one checked) is the real server, every later
    one points elsewhere. Uploads still go to the checked address, with no second lookup."""
    name = "s3.rebind.test"
    port = URL(seaweed.endpoint).port
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            lookups.append(host)
            if len(lookups) > 1:
                raise socket.gaierror(socket.EAI_NONAME, "rebound: this answer must never be used")
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    bucket = seaweed.bucket("rebind")
    request_s3 = {"endpoint_url": f"http://{name}:{port}", "bucket_name": bucket, "region": REGION,
                  "access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key}
    destination = S3Destination(make_settings())
    try:
        for n in range(2):
            art = file_artifact(tmp_path / f"o{n}", "a.png", png_bytes())
            [out] = await destination.deliver(job(request_id=f"rb-{n}", s3=request_s3), [art])
            assert seaweed.client().get_object(Bucket=bucket, Key=out.s3_key)["Body"].read() == png_bytes()
            assert URL(out.url).host == name  # presigned for the name, not the address
    finally:
        await destination.aclose()
    assert lookups == [name]


def test_pinned_client_keeps_the_name_for_tls_and_refuses_other_hosts():
    """SNI and certificate checks use `host`, which pinning leaves as the name; a host the
    client was not pinned for is never resolved."""
    client = boto3.session.Session().client(
        "s3", endpoint_url="https://s3.pinned.test", region_name=REGION,
        aws_access_key_id="k", aws_secret_access_key="s",
    )
    try:
        endpoint.pin(client, "https://s3.pinned.test", ("192.0.2.10",))
        pools = client._endpoint.http_session._manager.pool_classes_by_scheme
        conn = pools["https"].ConnectionCls("s3.pinned.test", 443)
        assert conn.host == "s3.pinned.test" and conn.pins == {"s3.pinned.test": ("192.0.2.10",)}
        stray = pools["https"].ConnectionCls("elsewhere.test", 443)
        with pytest.raises(Exception, match="not the checked endpoint"):
            stray._new_conn()
    finally:
        client.close()


@pytest.mark.parametrize(("cert_for", "verified"), [("s3.tls.test", True), ("someone-else.test", False)])
async def test_tls_to_a_pinned_endpoint_still_verifies_its_name(cert_for, verified, monkeypatch, tmp_path):
    """Connected to the pinned address, the certificate is still checked against the name:
    one for the endpoint's name passes, one for another name is refused."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_for).configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    seen: list[str] = []

    async def list_objects(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(content_type="application/xml", text=(
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
            "<KeyCount>0</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"))

    app = web.Application()
    app.router.add_get("/b", list_objects)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = boto3.session.Session().client(
        "s3", endpoint_url=f"https://s3.tls.test:{port}", region_name=REGION, verify=str(ca_file),
        aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(retries={"max_attempts": 1}),
    )
    try:
        # The first address refuses connections: the next one is tried, as urllib3 would.
        endpoint.pin(client, f"https://s3.tls.test:{port}", ("127.0.0.2", "127.0.0.1"))
        if verified:
            await asyncio.to_thread(client.list_objects_v2, Bucket="b", MaxKeys=1)
            assert seen == [f"s3.tls.test:{port}"]  # the Host header is the name, too
        else:
            with pytest.raises(SSLError, match="(?i)hostname|match"):
                await asyncio.to_thread(client.list_objects_v2, Bucket="b", MaxKeys=1)
            assert not seen
    finally:
        client.close()
        await runner.cleanup()
