"""A minimal ComfyUI client for driving the double in tests: one websocket, a message log."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def weightless(prefix: str = "t/ok", color: int = 255, batch: int = 2) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": batch, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def sd_graph(prefix: str = "t/sd", steps: int = 3, sampler: str = "euler", ckpt: str = "sd15.safetensors",
             seed: int = 1, size: int = 64) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


@dataclass
class Client:
    base: str
    client_id: str
    session: aiohttp.ClientSession = field(default=None)  # type: ignore[assignment]
    ws: aiohttp.ClientWebSocketResponse | None = None
    msgs: list[dict] = field(default_factory=list)      # text frames, parsed; binary as {"type": "binary", ...}
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None

    async def __aenter__(self) -> "Client":
        self.session = aiohttp.ClientSession()
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
        await self.session.close()

    async def connect(self) -> None:
        self.closed.clear()
        self.ws = await self.session.ws_connect(f"{self.base}/ws?clientId={self.client_id}")
        self._task = asyncio.create_task(self._read(self.ws))
        await self.wait(lambda m: m["type"] == "status" and "sid" in m["data"])

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for m in ws:
            if m.type == aiohttp.WSMsgType.TEXT:
                self.msgs.append(json.loads(m.data))
            elif m.type == aiohttp.WSMsgType.BINARY:
                b = m.data
                self.msgs.append({"type": "binary", "data": {"event": int.from_bytes(b[:4], "big"),
                                                             "image_type": int.from_bytes(b[4:8], "big"),
                                                             "payload": b[8:]}})
            self._new.set()
        self.closed.set()
        self._new.set()

    async def wait(self, pred, timeout: float = 10.0) -> dict:
        async def loop() -> dict:
            while True:
                for m in self.msgs:
                    if pred(m):
                        return m
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(loop(), timeout)

    async def wait_done(self, prompt_id: str, timeout: float = 10.0) -> dict:
        return await self.wait(lambda m: m["type"] == "executing" and m["data"].get("node") is None
                               and m["data"].get("prompt_id") == prompt_id, timeout)

    def events(self, prompt_id: str) -> list[dict]:
        out = []
        current = None
        for m in self.msgs:
            pid = m["data"].get("prompt_id") if isinstance(m.get("data"), dict) else None
            if m["type"] == "binary":
                if current == prompt_id:
                    out.append(m)
                continue
            if pid is not None:
                current = pid
            if pid == prompt_id:
                out.append(m)
        return out

    def types(self, prompt_id: str) -> list[str]:
        return [m["type"] for m in self.events(prompt_id)]

    def first(self, prompt_id: str, kind: str) -> dict:
        return next(m for m in self.events(prompt_id) if m["type"] == kind)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.post(self.base + path, json=body) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw and r.content_type == "application/json" else raw)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if r.content_type == "application/json" else raw)

    async def submit(self, prompt: dict, **extra: Any) -> str:
        status, body = await self.post("/prompt", {"prompt": prompt, "client_id": self.client_id, **extra})
        assert status == 200, body
        return body["prompt_id"]

    async def run(self, prompt: dict, **extra: Any) -> str:
        pid = await self.submit(prompt, **extra)
        await self.wait_done(pid)
        return pid
