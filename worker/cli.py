"""`comfy-worker`: one command with a subcommand per job.

    bridge          run the comfy_bridge HTTP app in front of any ComfyUI
    serve           run the Vast PyWorker (on Vast, or --local against a Vast emulator)
    call            send a workflow through the router to a worker and save the outputs
    provision       install ComfyUI, custom nodes and models from models_manifest.toml
    check-workflow  check a workflow against a running ComfyUI
    deploy          plan|apply|destroy|status: deploy.toml is the Vast deployment
    loadtest        latency, failures and $ per 1,000 images across targets, with a report
    mcp             serve workflows as MCP tools to AI agents (stdio or streamable HTTP)

Each subcommand's flags and logic live in the module that owns it; this file only
dispatches, so `comfy-worker --help` stays fast (imports are lazy).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> "module:function" taking (argparse.ArgumentParser) to add flags,
# and the module's `run(args) -> int` runs it.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bridge": ("comfy_bridge.cli", "run the comfy_bridge HTTP app in front of a ComfyUI"),
    "serve": ("worker.serve_cli", "run the Vast PyWorker server (or --local with an emulator)"),
    "call": ("worker.call_cli", "call a worker through the router and save the outputs"),
    "provision": ("comfy_bridge.provision.cli", "install ComfyUI, custom nodes and models"),
    "check-workflow": ("comfy_bridge.provision.check_cli", "check a workflow against a running ComfyUI"),
    "deploy": ("worker.deploy.cli", "deploy.toml as the Vast deployment: plan, apply, destroy, status"),
    "loadtest": ("worker.loadtest.cli", "measure latency, failures and $ per 1,000 images; write a report"),
    "mcp": ("worker.mcp.server", "serve workflows as MCP tools (stdio or streamable HTTP)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-worker", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
