"""ComfyUI's plain HTTP endpoints: /history, /queue, /object_info, /interrupt, /free, /upload/image, /view.

`ComfyRest` is the request/response half of comfy_bridge/comfyui/client.py's `ComfyClient`
(which adds the shared websocket and prompt tracking); every connection failure becomes
ComfyUnavailable (503, retriable), naming the endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from comfy_bridge.errors import ComfyUnavailable, DeliveryFailed


class ComfyRest:
    """HTTP calls on `base_url` through `_session`; mixed into ComfyClient, which sets them."""

    base_url: str
    _session: aiohttp.ClientSession | None
    _object_info: dict[str, Any]
    _object_info_loaded: bool

    # ---- plain endpoints ------------------------------------------------------------------

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        _, body = await self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> dict[str, Any]:
        _, body = await self._json("GET", "/queue")
        return body if isinstance(body, dict) else {}

    async def queue_position(self, prompt_id: str) -> str | None:
        """'running', 'pending' or None (finished or unknown)."""
        q = await self.queue()
        for key, name in (("queue_running", "running"), ("queue_pending", "pending")):
            if any(isinstance(i, list) and len(i) > 1 and i[1] == prompt_id for i in q.get(key, [])):
                return name
        return None

    async def system_stats(self, timeout_s: float | None = None) -> dict[str, Any]:
        _, body = await self._json("GET", "/system_stats", timeout_s=timeout_s)
        return body if isinstance(body, dict) else {}

    async def object_info(self, cls: str | None = None) -> dict[str, Any]:
        """All node classes (cached until a reconnect), or one class ({} when unknown)."""
        if cls is None:
            _, body = await self._json("GET", "/object_info")
            self._object_info = body if isinstance(body, dict) else {}
            self._object_info_loaded = True
            return self._object_info
        if cls in self._object_info:
            return {cls: self._object_info[cls]}
        _, body = await self._json("GET", f"/object_info/{cls}")
        if isinstance(body, dict) and cls in body:
            self._object_info[cls] = body[cls]
            return {cls: body[cls]}
        return {}

    def node_info(self, cls: str) -> dict[str, Any] | None:
        """A class's cached /object_info entry (after missing_classes), or None."""
        info = self._object_info.get(cls)
        return info if isinstance(info, dict) else None

    async def missing_classes(self, names: set[str]) -> list[str]:
        """Class types ComfyUI does not know; a cache miss is re-checked with ComfyUI."""
        if not self._object_info_loaded:
            await self.object_info()
        missing = [n for n in names if n not in self._object_info]
        if missing:
            await asyncio.gather(*(self.object_info(n) for n in missing))
        return sorted(n for n in names if n not in self._object_info)

    async def interrupt(self, prompt_id: str) -> None:
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/queue", json={"delete": prompt_ids})

    async def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        await self._json("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    async def upload_image(
        self, data: bytes, name: str, subfolder: str = "", overwrite: bool = True
    ) -> str:
        """Place a file in ComfyUI's input folder; returns the name LoadImage takes."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("subfolder", subfolder)
        form.add_field("type", "input")
        form.add_field("overwrite", "true" if overwrite else "false")
        _, body = await self._json("POST", "/upload/image", data=form)
        stored = body.get("name", name) if isinstance(body, dict) else name
        folder = body.get("subfolder", subfolder) if isinstance(body, dict) else subfolder
        return f"{folder}/{stored}" if folder else stored

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        async with self._call("GET", "/view", params=params) as resp:
            if resp.status != 200:
                raise DeliveryFailed(
                    f"ComfyUI could not serve output {subfolder}/{filename} (HTTP {resp.status})"
                )
            return await resp.read()

    # ---- HTTP plumbing ----------------------------------------------------------------------

    def _call(self, method: str, path: str, timeout_s: float | None = None, **kw: Any) -> Any:
        assert self._session is not None, "call start() first"
        if timeout_s is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeout_s)
        return _Call(self._session.request(method, self.base_url + path, **kw), self.base_url, path)

    async def _json(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), timeout_s: float | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self._call(method, path, timeout_s=timeout_s, **kw) as resp:
            raw = await resp.read()
            if resp.status not in ok:
                raise ComfyUnavailable(
                    f"ComfyUI answered {resp.status} to {method} {path}: "
                    f"{raw[:200].decode('utf-8', 'replace')}"
                )
            if not raw:
                return resp.status, {}
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                raise ComfyUnavailable(f"ComfyUI answered {method} {path} with non-JSON") from None


_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, asyncio.TimeoutError)


class _Call:
    """`async with` around one request, mapping connection failures to ComfyUnavailable."""

    def __init__(self, ctx: Any, base_url: str, path: str) -> None:
        self._ctx, self._base_url, self._path = ctx, base_url, path

    def _unavailable(self, exc: BaseException) -> ComfyUnavailable:
        return ComfyUnavailable(
            f"ComfyUI at {self._base_url} is not reachable ({type(exc).__name__} on {self._path}); "
            "it may be starting or restarting, retry shortly"
        )

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            return await self._ctx.__aenter__()
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self._ctx.__aexit__(exc_type, exc, tb)
        except _CONNECTION_ERRORS:
            pass
        if isinstance(exc, _CONNECTION_ERRORS):  # the body broke off mid-read
            raise self._unavailable(exc) from None
