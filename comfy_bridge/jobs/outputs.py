"""A finished prompt's outputs: found in its history, pointed at on disk, removed afterwards.

`collect` turns ComfyUI's history `outputs` (every key, temp previews only when nothing
was saved) and the frames SaveImageWebsocket sent into Artifacts for delivery; `remove`
empties a submission's output folder off the event loop; `write_failed` is the 502 for a
disk that cannot take the converted or spooled files. Used by comfy_bridge/jobs/serving.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.comfyui.client import ComfyClient, PromptResult
from comfy_bridge.delivery.base import Artifact, guess_mimetype
from comfy_bridge.errors import DeliveryFailed
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)


async def collect(
    result: PromptResult, out_dir: str, settings: BridgeSettings, client: ComfyClient
) -> list[Artifact]:
    """Every file ComfyUI reported, whatever the key; temp previews only if alone."""
    saved: list[Artifact] = []
    temp: list[Artifact] = []
    for node_id, out in result.outputs.items():
        if not isinstance(out, dict):
            continue
        for key, items in out.items():
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                kind = item.get("type", "output")
                art = Artifact(
                    filename=item["filename"],
                    node_id=str(node_id),
                    output_type=str(key),
                    mimetype=guess_mimetype(item["filename"]),
                    subfolder=str(item.get("subfolder") or ""),
                    comfy_type=str(kind),
                )
                if kind == "output":
                    saved.append(art)
                elif kind == "temp":
                    temp.append(art)
    for i, (node_id, frame) in enumerate(result.ws_images):
        ext = "jpg" if frame.mimetype == "image/jpeg" else "png"
        saved.append(Artifact(
            filename=f"{out_dir.replace('/', '_')}_ws_{node_id}_{i:05d}.{ext}",
            node_id=node_id, output_type="images", mimetype=frame.mimetype or "image/png",
            data=frame.payload, comfy_type="websocket",
        ))
    artifacts = saved or temp
    await asyncio.gather(*(_locate(a, settings, client) for a in artifacts if a.data is None))
    return artifacts

async def _locate(art: Artifact, settings: BridgeSettings, client: ComfyClient) -> None:
    """Point at the file in ComfyUI's folder (fast) or fetch it through /view."""
    folder = settings.comfyui_folder(art.comfy_type) if art.comfy_type in ("output", "temp") else None
    if folder is not None:
        base = folder.resolve()
        path = (base / art.subfolder / art.filename).resolve()
        if path.is_relative_to(base) and path.is_file():
            art.path = path
            return
    art.data = await client.view(art.filename, art.subfolder, art.comfy_type)


def write_failed(exc: OSError, artifacts: list[Artifact]) -> DeliveryFailed:
    """A 502 naming the disk error; the files stay in ComfyUI's output folder."""
    reason = exc.strerror or type(exc).__name__
    listed = []
    for art in artifacts:
        try:
            size = art.size
        except OSError:
            size = 0
        listed.append({"filename": art.filename, "node_id": art.node_id, "output_type": art.output_type,
                       "mimetype": art.mimetype, "bytes": size, "upload_error": reason})
    log.error("could not write outputs for delivery: %s (errno %s)", reason, exc.errno)
    return DeliveryFailed(
        f"the outputs were made but could not be written for delivery ({reason}); they were kept "
        "in ComfyUI's output folder on the worker",
        errno=exc.errno, output=listed,
    )


def remove(targets: list[Path]) -> None:
    """Remove each folder (its files) or file; blocking, so run it in a thread."""
    for target in targets:
        try:
            if target.is_dir():
                for child in target.iterdir():
                    child.unlink(missing_ok=True)
                target.rmdir()
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", target, exc)
