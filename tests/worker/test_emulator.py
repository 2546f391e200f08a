"""The router emulator speaks the real wire shapes and signs like the real router."""

from __future__ import annotations

import base64

import aiohttp
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from worker.emulator import signed_message


def verifies(pem: str, url: str, signature: str) -> bool:
    """What vastai's Backend.__check_signature does with the key from /pubkey/."""
    try:
        pkcs1_15.new(RSA.import_key(pem)).verify(SHA256.new(signed_message(url)), base64.b64decode(signature))
        return True
    except (ValueError, TypeError):
        return False


async def route(s: aiohttp.ClientSession, url: str, **body) -> tuple[int, dict]:
    body = {"endpoint": "test-endpoint", "api_key": "test-key", "cost": 3.5, **body}
    async with s.post(f"{url}/route/", json=body) as r:
        return r.status, await r.json()


async def test_route_waits_for_a_loaded_worker_then_hands_out_signed_auth_data(emulator):
    async with aiohttp.ClientSession() as s:
        assert (await route(s, emulator.url, api_key="wrong"))[0] == 401
        assert (await route(s, emulator.url, endpoint="other"))[0] == 404
        status, waiting = await route(s, emulator.url)
        assert status == 200 and "url" not in waiting and waiting["request_idx"] > 0

        report = {"id": 5, "url": "http://127.0.0.1:4000", "loadtime": 0.0, "max_perf": 0.0,
                  "cur_load": 0.0, "error_msg": "", "new_load": 0.0}
        async with s.post(f"{emulator.url}/worker_status/", json=report) as r:
            assert r.status == 200
        assert "url" not in (await route(s, emulator.url))[1]  # loading is not ready
        async with s.post(f"{emulator.url}/worker_status/", json={**report, "loadtime": 1.5, "max_perf": 9.0}) as r:
            assert r.status == 200

        status, auth = await route(s, emulator.url, request_idx=waiting["request_idx"])
        assert status == 200
        assert auth["url"] == "http://127.0.0.1:4000" and auth["request_idx"] == waiting["request_idx"]
        assert auth["cost"] == 3.5 and auth["endpoint"] == "test-endpoint" and auth["reqnum"] >= 1
        async with s.get(f"{emulator.url}/pubkey/") as r:
            pem = await r.text()
        assert verifies(pem, auth["url"], auth["signature"])
        assert not verifies(pem, "http://127.0.0.1:4001", auth["signature"])

        async with s.post(f"{emulator.url}/worker_status/", json={**report, "loadtime": 1.5, "error_msg": "dead"}) as r:
            assert r.status == 200
        assert "url" not in (await route(s, emulator.url))[1]  # errored workers get no traffic

        async with s.post(f"{emulator.url}/delete_requests/", json={
                "worker_id": 5, "mtoken": "", "requests": [{"request_idx": 1, "success": True, "status": "Success"}]}) as r:
            assert r.status == 200
        async with s.get(f"{emulator.url}/reports") as r:
            seen = await r.json()
        assert len(seen["worker_status"]) == 3
        assert seen["delete_requests"] == [{"worker_id": 5, "request_idx": 1, "success": True, "status": "Success"}]
