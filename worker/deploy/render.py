"""Terraform-like text and JSON for plans, applies and status, with ${VAR} values hidden.

A field whose desired value came from `${VAR}` shows `<from $VAR>`, and its current
value shows `(hidden)`; every line also passes through `Desired.redact()`, so no value of
a variable the file uses can appear, whatever field it ended up in.
"""

from __future__ import annotations

import json
from typing import Any

from worker.deploy.config import Desired
from worker.deploy.plan import Plan, ResourceChange

SYMBOL = {"create": "+", "update": "~", "delete": "-", "noop": " "}
_ALIASES = {"endpoint_state": "state", "endpoint_name": "name"}


def _path(kind: str, field: str) -> str:
    return f"{kind}.{_ALIASES.get(field, field)}"


def _shown(desired: Desired, kind: str, field: str, old: Any, new: Any) -> tuple[str, str]:
    path = _path(kind, field)
    if path in desired.hidden:
        return ("(hidden)" if old is not None else "null"), desired.hidden[path]
    return json.dumps(old), (new if isinstance(new, str) and new.startswith("(known") else json.dumps(new))


def resource_lines(desired: Desired, r: ResourceChange) -> list[str]:
    ident = f" (id {r.id})" if r.id is not None else ""
    head = f"  {SYMBOL[r.action]} {r.kind} {r.name!r}{ident}"
    unread = [f"      (not reported by Vast, so not compared; sent with every write: {', '.join(r.unread)})"] \
        if r.unread else []
    if r.action == "noop":
        return [head + (": no changes" if r.id is not None else ": absent")] + unread
    lines = [head + (f"  # {r.note}" if r.note else "")]
    width = max((len(c.field) for c in r.changes), default=0)
    for c in r.changes:
        old, new = _shown(desired, r.kind, c.field, c.old, c.new)
        if r.action == "create":
            lines.append(f"      + {c.field.ljust(width)} = {new}")
        else:
            lines.append(f"      ~ {c.field.ljust(width)} = {old} -> {new}")
    return lines + unread


def plan_text(desired: Desired, plan: Plan) -> str:
    where = f" (env {plan.env})" if plan.env else ""
    lines = [f"deployment {plan.deployment!r}{where}:"]
    for r in plan.resources:
        lines += resource_lines(desired, r)
    counts = {a: sum(r.action == a for r in plan.resources) for a in ("create", "update", "delete")}
    if plan.has_changes:
        lines.append(f"Plan: {counts['create']} to add, {counts['update']} to change, {counts['delete']} to destroy.")
    else:
        lines.append("No changes: the account matches the file.")
    return desired.redact("\n".join(lines))


def plan_json(desired: Desired, plan: Plan) -> str:
    data = plan.model_dump()
    for r in data["resources"]:
        for c in r["changes"]:
            path = _path(r["kind"], c["field"])
            if path in desired.hidden:
                c["old"] = None if c["old"] is None else "(hidden)"
                c["new"] = desired.hidden[path]
    data["has_changes"] = plan.has_changes
    return desired.redact(json.dumps(data, indent=2, default=str))
