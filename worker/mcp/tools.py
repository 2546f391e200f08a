"""The MCP tools: their definitions, argument checks, and how a result becomes content.

- one tool per workflow template: its name, its description, and the template's JSON
  Schema as the input schema, exactly as `GET /workflows` gives it;
- `run_workflow`: any API-format graph, with input images as base64, data URIs or URLs;
- `list_templates`; `get_result(job_id)`: wait again for a call that outlasted the
  client's tool timeout (worker/mcp/jobs.py).

Arguments are checked against the tool's schema (comfy_bridge/templates/schema_check.py,
the same check as template parameters) before anything is sent,
and a bad one is a tool error naming the parameter. Results: images as image content
(downscaled above a size cap), other kinds (video, audio, files) as links with their
mimetype (S3 URLs) or embedded when inline, plus a text part with the request id,
timings and URLs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import aiohttp
import mcp_types as types

from comfy_bridge.templates import schema_check
from comfy_bridge.schemas.job import GenerateResponse, OutputFile
from comfy_bridge.jobs.stream_events import small_jpeg

RUN_WORKFLOW = "run_workflow"
LIST_TEMPLATES = "list_templates"
GET_RESULT = "get_result"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Images larger than this (bytes) are sent as a downscaled JPEG preview.
DEFAULT_IMAGE_CAP_BYTES = 1024 * 1024
_PREVIEW_PX = 1024
# S3 images are fetched for a preview only up to this size.
_FETCH_LIMIT_BYTES = 32 * 1024 * 1024

_COMMON = {
    "request_id": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,128}$",
                   "description": "names the outputs; the job_id of a call that outlasts the tool timeout"},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "give up after this many seconds"},
}

RUN_WORKFLOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "workflow": {"type": "object", "minProperties": 1,
                     "description": "a ComfyUI API-format graph: {node_id: {class_type, inputs}} "
                                    "('Save (API Format)')"},
        "images": {
            "type": "array",
            "description": "input images, referenced from the graph (LoadImage) by name",
            "items": {"type": "object", "required": ["name", "image"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1, "description": "file name the graph uses"},
                "image": {"type": "string", "minLength": 1, "description": "base64, a data: URI or an https:// URL"},
            }},
        },
        **_COMMON,
    },
    "required": ["workflow"],
    "additionalProperties": False,
}
GET_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"job_id": {"type": "string", "minLength": 1, "description": "the job_id a previous call returned"}},
    "required": ["job_id"],
    "additionalProperties": False,
}
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def tool_list(templates: list[dict[str, Any]]) -> list[types.Tool]:
    tools = [
        types.Tool(name=RUN_WORKFLOW, input_schema=RUN_WORKFLOW_SCHEMA, description=(
            "Run a ComfyUI workflow given as an API-format graph; returns the images it made "
            "(and links to other outputs). Long runs return a job_id for get_result.")),
        types.Tool(name=LIST_TEMPLATES, input_schema=EMPTY_SCHEMA,
                   description="List the workflow templates this server offers as tools, with their parameters."),
        types.Tool(name=GET_RESULT, input_schema=GET_RESULT_SCHEMA, description=(
            "Wait for the result of a call that returned a job_id because it outlasted the tool timeout.")),
    ]
    reserved = {t.name for t in tools}
    for t in templates:
        name = str(t.get("name", ""))
        if _NAME_RE.match(name) and name not in reserved:
            tools.append(types.Tool(name=name, description=t.get("description") or f"workflow template {name}",
                                    input_schema=t.get("schema") or EMPTY_SCHEMA))
    return tools


def argument_error(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What is wrong with `arguments` under `schema`, naming each parameter; None if fine."""
    problems = [f"parameter {p.param!r}: {p.message}" if p.param else p.message
                for p in schema_check.problems(schema, arguments)]
    return "invalid arguments: " + "; ".join(problems) if problems else None


def job_input(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The request `input` for a tool call (validated already). A template tool's
    arguments are exactly its parameters (its schema is the template's, as is)."""
    if tool == RUN_WORKFLOW:
        common = {k: arguments[k] for k in _COMMON if k in arguments}
        return {"workflow_json": arguments["workflow"], "images": arguments.get("images", []), **common}
    return {"modifier": tool, "modifications": dict(arguments)}


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


async def result_content(
    response: GenerateResponse, http: aiohttp.ClientSession, image_cap_bytes: int = DEFAULT_IMAGE_CAP_BYTES,
) -> types.CallToolResult:
    """Images as image content, other outputs as links or embedded files, and a summary."""
    blocks: list[Any] = []
    for out in response.output:
        blocks.extend(await _output_blocks(out, response.id, http, image_cap_bytes))
    summary = {
        "request_id": response.id,
        "prompt_id": response.prompt_id,
        "timings_ms": response.timings.model_dump(),
        "outputs": [{k: v for k, v in o.model_dump(exclude_none=True).items() if k != "data"} for o in response.output],
    }
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(summary, indent=1)), *blocks],
                                structured_content=summary)


async def _output_blocks(out: OutputFile, request_id: str, http: aiohttp.ClientSession, cap: int) -> list[Any]:
    blocks: list[Any] = []
    raw = base64.b64decode(out.data) if out.data else None
    if out.url:
        blocks.append(types.ResourceLink(uri=out.url, name=out.filename, mime_type=out.mimetype, size=out.bytes))
        if out.mimetype.startswith("image/") and out.bytes <= _FETCH_LIMIT_BYTES:
            raw = await _fetch(http, out.url)
    if raw is None:
        return blocks
    if out.mimetype.startswith("image/"):
        if len(raw) <= cap:
            data, mimetype = raw, out.mimetype
        else:
            data, mimetype = await asyncio.to_thread(small_jpeg, raw, _PREVIEW_PX, 85), "image/jpeg"
        blocks.append(types.ImageContent(data=base64.b64encode(data).decode(), mime_type=mimetype))
    elif not out.url:  # inline video, audio or file: embedded, named, with its mimetype
        blocks.append(types.EmbeddedResource(resource=types.BlobResourceContents(
            uri=f"comfy-worker://{request_id}/{out.filename}", mime_type=out.mimetype, blob=out.data or "")))
    return blocks


async def _fetch(http: aiohttp.ClientSession, url: str) -> bytes | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
            if r.status != 200:
                return None
            return await r.content.read(_FETCH_LIMIT_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return None
