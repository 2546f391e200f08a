"""A local model host: HTTP Range, per-connection throttling, tokens, redirects, faults.

Stands in for Hugging Face / Civitai in tests and in bench/provision.py. Each request is
recorded (range asked, bytes sent, whether it carried a token, which host name it was
addressed to) so tests assert behaviour, not timing. Files are also served under a Hugging
Face-shaped path (`/{owner}/{repo}/resolve/{revision}/{name}`, whose HEAD answers the
headers `huggingface_hub` reads), so bench/provision.py can compare its downloader too. `hold_until(pred)` parks body
requests until `pred(server)` is first true (or a timeout passes, which is recorded), so a
test can prove that downloads really run in parallel without racing on sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    status: int | None = None  # answer this status instead of the file
    drop_after: int | None = None  # close the connection after this many body bytes
    times: int = 1
    body_only: bool = False  # never on the 1-byte probe (bytes=0-0)


@dataclass
class Record:
    name: str
    host: str
    range: str | None
    start: int
    status: int
    authorization: str | None
    sent: int = 0


@dataclass
class ModelServer:
    files: dict[str, bytes] = field(default_factory=dict)
    rate_bps: float | None = None  # per connection
    ranges: bool = True
    tokens: dict[str, str] = field(default_factory=dict)  # name -> bearer token required
    redirects: dict[str, str] = field(default_factory=dict)  # name -> absolute URL
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    piece: int = 64 << 10
    hold_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.active: dict[str, int] = {}
        self.peak_active: dict[str, int] = {}
        self.peak_files = 0
        self.hold_timed_out = False
        self._hold: Callable[["ModelServer"], bool] | None = None
        self._changed = asyncio.Condition()

    # -- control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alt_url(self) -> str:
        """The same server under another host name (a 'CDN' for redirect tests)."""
        return f"http://localhost:{self.port}"

    def file_url(self, name: str, alt: bool = False) -> str:
        return f"{self.alt_url if alt else self.url}/f/{name}"

    def add_fault(self, name: str, fault: Fault) -> None:
        self.faults.setdefault(name, []).append(fault)

    def hold_until(self, pred: Callable[["ModelServer"], bool] | None) -> None:
        self._hold = pred

    def body_bytes(self, name: str | None = None) -> int:
        return sum(r.sent for r in self.records if name is None or r.name == name)

    def body_requests(self, name: str | None = None) -> list[Record]:
        """Requests that fetched file content (not the 1-byte probes)."""
        return [r for r in self.records if (name is None or r.name == name) and r.range != "bytes=0-0"
                and r.status in (200, 206)]

    # -- lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/f/{name}", self._handle)
        app.router.add_get("/{owner}/{repo}/resolve/{revision}/{name}", self._handle_hub)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _released(self) -> bool:
        """The hold is one-shot: once its condition held, every request goes through."""
        if self._hold is not None and self._hold(self):
            self._hold = None
        return self._hold is None

    # -- serving

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle_hub(self, request: web.Request) -> web.StreamResponse:
        """Hugging Face's resolve URL: HEAD gives commit, etag (an LFS file's sha256) and size."""
        name = request.match_info["name"]
        location = self.redirects.get(name)
        data = self.files.get(location.rpartition("/")[2] if location else name)
        if request.method != "HEAD" or data is None:
            return await self._handle(request)
        # Like the Hub, a redirect to the CDN already carries the file's metadata.
        return web.Response(status=302 if location else 200, headers={
            "X-Repo-Commit": "0" * 40, "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Linked-Size": str(len(data)), **({"Location": location} if location else {})})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        rng = request.headers.get("Range")
        rec = Record(name=name, host=request.host.split(":")[0], range=rng, start=0, status=200,
                     authorization=request.headers.get("Authorization"))
        self.records.append(rec)

        if name in self.redirects:
            rec.status = 302
            raise web.HTTPFound(self.redirects[name])
        if name in self.tokens and rec.authorization != f"Bearer {self.tokens[name]}":
            rec.status = 401
            return web.Response(status=401, text="unauthorized")
        data = self.files.get(name)
        if data is None:
            rec.status = 404
            return web.Response(status=404, text="not found")

        fault = None
        pending = self.faults.get(name) or []
        probe = rng == "bytes=0-0"
        if pending and not (probe and (pending[0].body_only or pending[0].status is None)):
            fault = pending[0]
            fault.times -= 1
            if fault.times <= 0:
                pending.pop(0)
        if fault and fault.status:
            rec.status = fault.status
            return web.Response(status=fault.status, text="injected")

        start, end, status = 0, len(data) - 1, 200
        if rng and self.ranges:
            m = _RANGE.match(rng)
            if not m or int(m.group(1)) >= len(data):
                rec.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            status = 206
        rec.start, rec.status = start, status
        resp = web.StreamResponse(status=status)
        resp.content_length = end - start + 1
        resp.headers["Accept-Ranges"] = "bytes" if self.ranges else "none"
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        try:
            await resp.prepare(request)
        except ConnectionError:  # the client already went away
            return resp

        is_body = end - start + 1 > 1
        if is_body:
            self.active[name] = self.active.get(name, 0) + 1
            self.peak_active[name] = max(self.peak_active.get(name, 0), self.active[name])
            self.peak_files = max(self.peak_files, sum(1 for v in self.active.values() if v > 0))
            await self._notify()
        try:
            if is_body and self._hold is not None:
                try:
                    async with self._changed:
                        await asyncio.wait_for(self._changed.wait_for(self._released), self.hold_timeout_s)
                except asyncio.TimeoutError:
                    self.hold_timed_out = True
                    self._hold = None
            began = time.monotonic()
            pos = start
            while pos <= end:
                n = min(self.piece, end + 1 - pos)
                if fault and fault.drop_after is not None and rec.sent + n > fault.drop_after:
                    n = fault.drop_after - rec.sent
                    if n > 0:
                        await resp.write(data[pos:pos + n])
                        rec.sent += n
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await resp.write(data[pos:pos + n])
                pos += n
                rec.sent += n
                if self.rate_bps:
                    ahead = rec.sent / self.rate_bps - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await resp.write_eof()
            return resp
        except ConnectionError:  # the client went away (aria2c closes a piece's stream once done)
            return resp
        finally:
            if is_body:
                self.active[name] -= 1
                await self._notify()


async def _main() -> None:
    """`python -m tests.provision.model_server --size-mib N --rate-mib-s R`: serve one random file
    until killed; prints `URL SHA256 SIZE` once listening (for bench/provision.py)."""
    import argparse
    import os

    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=float, default=32)
    p.add_argument("--rate-mib-s", type=float, default=0, help="per-connection limit (0: none)")
    args = p.parse_args()
    data = os.urandom(int(args.size_mib * (1 << 20)))
    server = ModelServer(files={"model.bin": data}, rate_bps=args.rate_mib_s * (1 << 20) or None)
    await server.start()
    print(server.file_url("model.bin"), hashlib.sha256(data).hexdigest(), len(data), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
