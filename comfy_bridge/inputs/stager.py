"""Places a request's `images` where ComfyUI's LoadImage (and friends) can read them.

Each run gets its own folder, `input/cvw/<request_id>/<run_id>/`, so two requests that
both send `face.png` never see each other's file, nor do two runs of one request_id (a
resend starting while the first run's folder is being removed), and the folder goes when
the run ends. The workflow refers to an image by its plain `name`; `stage` answers the
path ComfyUI must see (`cvw/<request_id>/<run_id>/<name>`) and the job runner rewrites the graph's string inputs
equal to a staged name. Files are written straight into ComfyUI's input folder when its
path is known (no HTTP round trip), else uploaded with POST /upload/image.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path, PurePath
from typing import Any, Protocol

import aiohttp
from PIL import Image

from comfy_bridge import logs
from comfy_bridge.s3.clients import S3Clients
from comfy_bridge.errors import InvalidInputImage
from comfy_bridge.net.guard import guarded_session
from comfy_bridge.inputs.sources import (
    SourceError,
    decode_base64,
    decode_data_uri,
    fetch_s3,
    fetch_url,
    kind_of,
)
from comfy_bridge.schemas.job import InputImage, JobInput
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

SUBFOLDER = "cvw"
# Names with these extensions must be images Pillow can read; other media (video, audio,
# latents...) are passed through for the nodes that load them.
_IMAGE_EXTENSIONS = {"", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# base64 decoding of big inputs goes to a thread; small ones are quicker on the loop.
_THREAD_DECODE_CHARS = 1 << 20


class Uploader(Protocol):
    async def upload_image(
        self, data: bytes, name: str, subfolder: str = "", overwrite: bool = True
    ) -> Any: ...


def _check_content(name: str, data: bytes) -> None:
    if PurePath(name).suffix.lower() not in _IMAGE_EXTENSIONS:
        return
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Image.DecompressionBombError as exc:
        raise SourceError(f"is too large an image: {exc}") from None
    except Exception:
        raise SourceError("is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None


class InputStager:
    """Decode or fetch, check, and place every input of a request; remove them afterwards."""

    def __init__(
        self,
        settings: BridgeSettings,
        client: Uploader | None = None,
        *,
        s3_clients: S3Clients | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self._s3 = s3_clients or S3Clients(settings.s3)
        self._session: aiohttp.ClientSession | None = None

    def subfolder(self, run_key: str) -> str:
        return f"{SUBFOLDER}/{run_key}"

    def request_dir(self, run_key: str) -> Path | None:
        """`input/cvw/<request_id>/<run_id>` (`JobInput.run_key`), when ComfyUI's path is known."""
        inputs = self.settings.comfyui_folder("input")
        return None if inputs is None else inputs / SUBFOLDER / run_key

    async def stage(self, job: JobInput) -> dict[str, str]:
        """Map each input name to the path LoadImage must be given; 422 naming a bad entry."""
        images = job.images
        if not images:
            return {}
        limit = self.settings.max_input_images
        if len(images) > limit:
            raise InvalidInputImage(
                f"{len(images)} input images given, at most {limit} allowed",
                name=images[limit].name,
                index=limit,
                limit=limit,
            )
        seen: set[str] = set()
        for i, image in enumerate(images):
            if image.name in seen:
                raise InvalidInputImage(
                    f"images[{i}] {image.name!r}: the name is used twice", name=image.name, index=i
                )
            seen.add(image.name)

        loaded = await asyncio.gather(
            *(self._load(job, image) for image in images), return_exceptions=True
        )
        errors = [
            {"index": i, "name": image.name, "form": kind_of(image.image), "reason": str(result)}
            for i, (image, result) in enumerate(zip(images, loaded))
            if isinstance(result, SourceError)
        ]
        for result in loaded:
            if isinstance(result, BaseException) and not isinstance(result, SourceError):
                raise result
        if errors:
            first = errors[0]
            raise InvalidInputImage(
                f"images[{first['index']}] {first['name']!r} ({first['form']}) {first['reason']}",
                name=first["name"],
                index=first["index"],
                errors=errors,
            )
        staged: dict[str, str] = {}
        try:
            for image, data in zip(images, loaded):
                assert isinstance(data, bytes)
                staged[image.name] = await self._place(job.run_key, image.name, data)
        except BaseException:
            await self.cleanup(job)
            raise
        log.info("staged %d input file(s)", len(staged))
        return staged

    async def _load(self, job: JobInput, image: InputImage) -> bytes:
        max_bytes = self.settings.max_input_image_bytes
        form = kind_of(image.image)
        if form == "url":
            data = await fetch_url(
                self._http(),
                image.image,
                max_bytes=max_bytes,
                allow_private=self.settings.allow_private_urls,
                timeout_s=self.settings.input_fetch_timeout_s,
            )
        elif form == "s3":
            data = await fetch_s3(image.image, job.s3, self.settings, self._s3, max_bytes=max_bytes)
        else:
            decode = decode_data_uri if form == "data_uri" else decode_base64
            if len(image.image) > _THREAD_DECODE_CHARS:
                data = await asyncio.to_thread(decode, image.image, max_bytes)
            else:
                data = decode(image.image, max_bytes)
        await asyncio.to_thread(_check_content, image.name, data)
        return data

    async def _place(self, run_key: str, name: str, data: bytes) -> str:
        subfolder = self.subfolder(run_key)
        folder = self.request_dir(run_key)
        if folder is not None:
            await asyncio.to_thread(_write, folder / name, data)
            return f"{subfolder}/{name}"
        if self.client is None:
            raise RuntimeError("InputStager needs comfyui_path or a ComfyUI client to place inputs")
        answer = await self.client.upload_image(data, name, subfolder, True)
        if isinstance(answer, dict) and answer.get("name"):
            sub = answer.get("subfolder") or ""
            return f"{sub}/{answer['name']}" if sub else str(answer["name"])
        return f"{subfolder}/{name}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = guarded_session(
                allow_private=self.settings.allow_private_urls,
                timeout_s=self.settings.input_fetch_timeout_s,
                headers={"User-Agent": "comfy-vast-worker"},
            )
        return self._session

    async def cleanup(self, job: JobInput) -> None:
        """Remove the run's input folder (when ComfyUI's path is known), and its request's if empty."""
        folder = self.request_dir(job.run_key)
        if folder is not None:
            await asyncio.to_thread(_remove_run_dir, folder)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._s3.aclose()


def _remove_run_dir(folder: Path) -> None:
    shutil.rmtree(folder, True)
    try:
        folder.parent.rmdir()  # another run of this request_id may still use it: then it stays
    except OSError:
        pass


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    tmp.replace(path)
