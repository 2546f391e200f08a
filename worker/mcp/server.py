"""`comfy-worker mcp`: an MCP server (the official `mcp` SDK 2.x, low-level Server) whose
tools run ComfyUI workflows on a Vast endpoint or a bridge.

    comfy-worker mcp [--transport stdio|http] [--host 127.0.0.1] [--port 8765]
                     [--router URL --endpoint NAME --api-key KEY | --bridge-url URL]
                     [--workflows DIR] [--tool-timeout 50]

Tools and results: worker/mcp/tools.py; calls that outlast the tool timeout: jobs.py;
where generations run: backend.py. While a tool runs, the request's stream events go
out as MCP progress notifications (when the client asked for them with a progress
token). Over stdio the protocol owns stdout, so logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from comfy_bridge import logs
from worker.mcp import tools
from worker.mcp.backend import Backend, BridgeBackend, RouterBackend
from worker.mcp.jobs import JobStore

log = logs.get(__name__)

REPO_WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
DEFAULT_HTTP_PORT = 8765


def build_server(store: JobStore) -> Server[Any]:
    """The MCP server over `store` (its backend gives the templates and runs the jobs)."""
    templates: dict[str, dict[str, Any]] = {}

    async def refresh() -> list[dict[str, Any]]:
        listed = await store.backend.templates()
        templates.clear()
        templates.update({str(t.get("name")): t for t in listed})
        return listed

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools.tool_list(await refresh()))

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        if name == tools.LIST_TEMPLATES:
            listed = await refresh()
            summary = [{"name": t["name"], "description": t.get("description", ""), "schema": t.get("schema")}
                       for t in listed]
            return types.CallToolResult(content=[types.TextContent(text=_dumps(summary))],
                                        structured_content={"templates": summary})
        if name == tools.GET_RESULT:
            problem = tools.argument_error(tools.GET_RESULT_SCHEMA, arguments)
            if problem:
                return tools.error_result(problem)
            job = store.get(arguments["job_id"])
            if job is None:
                return tools.error_result(
                    f"parameter 'job_id': no job {arguments['job_id']!r} on this server (finished long ago, "
                    "or started by another server process)")
            return await store.wait(job, _reporter(ctx))
        if name == tools.RUN_WORKFLOW:
            schema = tools.RUN_WORKFLOW_SCHEMA
        else:
            if name not in templates:
                await refresh()
            if name not in templates:
                return tools.error_result(
                    f"unknown tool {name!r}; tools: {', '.join([tools.RUN_WORKFLOW, *sorted(templates)])}")
            schema = templates[name].get("schema") or tools.EMPTY_SCHEMA
        problem = tools.argument_error(schema, arguments)
        if problem:
            return tools.error_result(f"{name}: {problem}")
        job = store.start(tools.job_input(name, arguments))
        return await store.wait(job, _reporter(ctx))

    return Server("comfy-worker", version="0.1.0", instructions=(
        "Generate images and videos with ComfyUI workflows on GPU workers. Call list_templates "
        "or one of the template tools; run_workflow takes any API-format graph. A long call "
        "returns a job_id: call get_result(job_id) to keep waiting."),
        on_list_tools=list_tools, on_call_tool=call_tool)


def _reporter(ctx: ServerRequestContext[Any]):  # noqa: ANN202 - jobs.Reporter
    async def report(progress: float, message: str) -> None:
        await ctx.session.report_progress(progress, 100.0, message)

    return report


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=1)


def make_backend(args: argparse.Namespace) -> Backend:
    if args.bridge_url:
        return BridgeBackend(args.bridge_url)
    from worker.client import WorkerClient

    return RouterBackend(WorkerClient(args.endpoint, args.api_key, router_url=args.router), Path(args.workflows))


# ---- the CLI ---------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from worker.call_cli import add_router_arguments

    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (an MCP client starts this command) or http (streamable HTTP on --host:--port/mcp)")
    p.add_argument("--host", default="127.0.0.1", help="http: address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help=f"http: port (default {DEFAULT_HTTP_PORT})")
    add_router_arguments(p)
    p.add_argument("--bridge-url", default=os.environ.get("COMFY_WORKER_BRIDGE_URL"),
                   help="talk to a bridge directly instead of through a router")
    p.add_argument("--workflows", default=str(REPO_WORKFLOWS),
                   help="templates offered as tools when going through a router (default: this repo's workflows/)")
    p.add_argument("--tool-timeout", type=float, default=50.0,
                   help="seconds a tool call waits before returning a job_id for get_result (default 50)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)  # stderr: stdout belongs to the protocol over stdio
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    store = JobStore(make_backend(args), tool_timeout_s=args.tool_timeout)
    server = build_server(store)
    try:
        if args.transport == "stdio":
            from mcp.server.stdio import stdio_server

            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        else:
            import uvicorn

            app = server.streamable_http_app(host=args.host)
            config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower())
            await uvicorn.Server(config).serve()
    finally:
        await store.aclose()
    return 0
