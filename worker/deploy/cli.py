"""`comfy-worker deploy plan|apply|destroy|status`: deploy.toml is the Vast deployment.

    comfy-worker deploy plan    [--file deploy.toml] [--env E] [--image-tag T] [--json] [--detailed-exitcode]
    comfy-worker deploy apply   [--yes] [--roll] [--state-out FILE] (and plan's flags)
    comfy-worker deploy destroy [--yes]
    comfy-worker deploy status

Where it talks: --vast-url / COMFY_WORKER_VAST_URL (default https://console.vast.ai) and
--autoscaler-url / COMFY_WORKER_AUTOSCALER_URL (default https://run.vast.ai); the key is
VAST_API_KEY or the vastai SDK's key file, and is never printed. Exit status: 0 done (plan:
no changes), 2 plan with --detailed-exitcode found changes, 1 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from comfy_bridge import logs
from comfy_bridge.errors import BridgeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    sub = p.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")
    for name, help_text in (("plan", "show what apply would create, change or delete"),
                            ("apply", "converge the account to the file"),
                            ("destroy", "delete the workergroup, endpoint and template"),
                            ("status", "the endpoint, its workers and the template hash in use")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--file", type=Path, default=Path("deploy.toml"), help="the deployment (default deploy.toml)")
        q.add_argument("--env", dest="deploy_env", metavar="NAME", help="lay [env.NAME] over the base tables")
        q.add_argument("--vast-url", default=os.environ.get("COMFY_WORKER_VAST_URL", "https://console.vast.ai"),
                       help="Vast's console API (COMFY_WORKER_VAST_URL)")
        q.add_argument("--autoscaler-url", default=os.environ.get("COMFY_WORKER_AUTOSCALER_URL", "https://run.vast.ai"),
                       help="Vast's autoscaler (COMFY_WORKER_AUTOSCALER_URL)")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")
        q.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        if name in ("plan", "apply"):
            q.add_argument("--image-tag", help="overrides [template] tag (e.g. the commit CI just pushed)")
        if name == "plan":
            q.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 2: changes, 1: error")
        if name in ("apply", "destroy"):
            q.add_argument("--yes", action="store_true", help="do not ask before writing")
        if name == "apply":
            q.add_argument("--roll", action="store_true",
                           help="when the template changed, ask for a rolling update of the workers")
            q.add_argument("--state-out", type=Path, help="write what was applied (ids, hash, commit, time) as JSON")


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    try:
        return asyncio.run(_run(args))
    except BridgeError as e:
        print(f"comfy-worker deploy {args.deploy_command}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} Not a terminal: pass --yes to proceed.", file=sys.stderr)
        return False
    return input(f"{question} Type 'yes' to proceed: ").strip() == "yes"


async def _run(args: argparse.Namespace) -> int:
    from worker.deploy import apply as applying
    from worker.deploy import config, plan, render
    from worker.deploy.vast_api import ApiKey, VastApi

    desired = config.load(args.file, env_name=args.deploy_env, image_tag=getattr(args, "image_tag", None))
    api = VastApi(ApiKey.find(), vast_url=args.vast_url, autoscaler_url=args.autoscaler_url)
    account = await api.read(desired.config.deploy.name)
    cmd = args.deploy_command

    if cmd == "status":
        return await _status(desired, api, account, args.json)
    if cmd == "destroy":
        p = plan.destroy_plan(desired, account)
        if not p.has_changes:
            print("nothing to destroy: the account holds none of this deployment")
            return 0
        print(render.plan_json(desired, p) if args.json else render.plan_text(desired, p))
        print("Deleting the workergroup stops recruiting; Vast's SDK notes it does not by itself destroy the "
              "instances: deleting the endpoint then releases its workers and requests in flight fail.")
        if not await asyncio.to_thread(_confirm, "Destroy these resources?", args.yes):
            return 1
        await applying.destroy(desired, api, p)
        return 0

    p = plan.make_plan(desired, account)
    print(render.plan_json(desired, p) if args.json and cmd == "plan" else render.plan_text(desired, p))
    if cmd == "plan":
        return 2 if (p.has_changes and args.detailed_exitcode) else 0
    if p.has_changes and not await asyncio.to_thread(_confirm, "Apply these changes?", args.yes):
        return 1
    state = await applying.apply(desired, api, p, roll=args.roll)  # writes nothing when nothing differs
    if args.state_out:
        text = desired.redact(state.model_dump_json(indent=2))
        await asyncio.to_thread(args.state_out.write_text, text + "\n")
        print(f"state written to {args.state_out}")
    return 0


async def _status(desired: Any, api: Any, account: Any, as_json: bool) -> int:
    from worker.deploy.plan import match

    template, endpoint, group = match(desired, account)
    workers = await api.endpoint_workers(endpoint["id"]) if endpoint else []
    data = {
        "deployment": desired.config.deploy.name,
        "endpoint": None if endpoint is None else {k: endpoint.get(k) for k in (
            "id", "endpoint_name", "endpoint_state", "min_load", "cold_workers", "max_workers", "max_queue_time")},
        "workergroup": None if group is None else {k: group.get(k) for k in ("id", "template_hash", "search_params")},
        "template": None if template is None else {k: template.get(k) for k in ("id", "hash_id", "image", "tag")},
        "workers": workers,
    }
    if group and template and group.get("template_hash") != template.get("hash_id"):
        data["warning"] = "the workergroup runs an older template hash than the template's current one: apply"
    if as_json:
        print(desired.redact(json.dumps(data, indent=2)))
        return 0
    lines = [f"deployment {data['deployment']!r}"]
    if endpoint is None:
        lines.append("  endpoint: not created (run `comfy-worker deploy apply`)")
    else:
        lines.append(f"  endpoint {endpoint.get('endpoint_name')!r} (id {endpoint.get('id')}): "
                     f"{endpoint.get('endpoint_state')}, max_workers {endpoint.get('max_workers')}")
    if template is not None:
        lines.append(f"  template (id {template.get('id')}): hash {template.get('hash_id')}, "
                     f"image {template.get('image')}:{desired.display('template.tag', template.get('tag'))}")
    if group is not None:
        lines.append(f"  workergroup (id {group.get('id')}): template hash in use {group.get('template_hash')}")
    lines.append(f"  workers: {len(workers)}")
    for w in workers:
        lines.append(f"    {w.get('id')}: {w.get('status')}, measured_perf {w.get('measured_perf')}"
                     + (f", error: {w.get('error_msg')}" if w.get("error_msg") else ""))
    if "warning" in data:
        lines.append(f"  warning: {data['warning']}")
    print(desired.redact("\n".join(lines)))
    return 0
