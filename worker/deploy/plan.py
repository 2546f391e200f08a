"""The diff between deploy.toml and the account: per resource and field, + ~ or -.

Resources are matched by name, never by "the newest id": the template named for the
deployment (`[deploy] name`), the endpoint by `endpoint_name`, the workergroup by the
endpoint it belongs to. Two of a kind under one name is an error, not a guess.

A template change gives the template a new hash_id, so the workergroup's template_hash
changes too ("known after apply"): that is the change that moves workers (a rolling
update). Endpoint fields change scaling only; workergroup fields change which machines
are recruited next.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from comfy_bridge.errors import DeployFailed
from worker.deploy.config import ENDPOINT_FIELDS, Desired, parse_docker_options
from worker.deploy.vast_api import Account

KNOWN_AFTER_APPLY = "(known after apply)"
Kind = Literal["template", "endpoint", "workergroup"]
Action = Literal["create", "update", "delete", "noop"]


class FieldChange(BaseModel):
    field: str
    old: Any = None
    new: Any = None


class ResourceChange(BaseModel):
    kind: Kind
    action: Action
    name: str
    id: int | None = None
    hash_id: str | None = None
    changes: list[FieldChange] = Field(default_factory=list)
    note: str = ""
    unread: list[str] = Field(default_factory=list)  # fields the account does not report (not compared)
    current: dict[str, Any] | None = Field(default=None, exclude=True)  # the account's row, for apply


class Plan(BaseModel):
    deployment: str
    env: str | None = None
    resources: list[ResourceChange]

    @property
    def has_changes(self) -> bool:
        return any(r.action != "noop" for r in self.resources)

    def of(self, kind: Kind) -> ResourceChange:
        return next(r for r in self.resources if r.kind == kind)


def _one(rows: list[dict[str, Any]], what: str) -> dict[str, Any] | None:
    if len(rows) > 1:
        ids = ", ".join(str(r.get("id")) for r in rows)
        raise DeployFailed(f"{len(rows)} {what} (ids {ids}): the deployment cannot tell which it manages. "
                           "Delete or rename the extra ones in the Vast console, then run again.")
    return rows[0] if rows else None


def match(desired: Desired, account: Account) -> tuple[dict | None, dict | None, dict | None]:
    """(template, endpoint, workergroup) of the account that this deployment manages."""
    name = desired.config.deploy.name
    ep_name = desired.config.endpoint_name
    template = _one(account.templates, f"templates named {name!r}")
    endpoint = _one([e for e in account.endpoints if e.get("endpoint_name") == ep_name],
                    f"endpoints named {ep_name!r}")
    group = None
    if endpoint is not None:
        group = _one([g for g in account.workergroups if g.get("endpoint_id") == endpoint["id"]
                      or ("endpoint_id" not in g and g.get("endpoint_name") == ep_name)],
                     f"workergroups on endpoint {ep_name!r}")
    return template, endpoint, group


def _num_equal(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


Item = tuple[str, str, Any, Any, bool]  # field, the account row's key, current, desired, equal


def _diff(current: dict[str, Any] | None, items: list[Item]) -> tuple[list[FieldChange], list[str]]:
    """(changes, fields the account's row does not report). A field Vast does not return
    cannot be compared: it is not shown as a change (so a second apply writes nothing),
    and is sent anyway with any write of the resource, which always carries the full state."""
    if current is None:
        return [FieldChange(field=f, new=new) for f, _, _, new, _ in items], []
    changes, unread = [], []
    for field, key, old, new, same in items:
        if key not in current:
            unread.append(field)
        elif not same:
            changes.append(FieldChange(field=field, old=old, new=new))
    return changes, unread


def template_changes(desired: Desired, current: dict[str, Any] | None) -> tuple[list[FieldChange], list[str]]:
    t = desired.config.template
    cur = current or {}
    ports, env = parse_docker_options(cur.get("env"))
    items: list[Item] = [
        ("image", "image", cur.get("image"), t.image, cur.get("image") == t.image),
        ("tag", "tag", cur.get("tag"), t.tag, cur.get("tag") == t.tag),
        ("ports", "env", ports, t.ports, sorted(ports) == sorted(t.ports)),
        *((f"env.{k}", "env", env.get(k), t.env.get(k), env.get(k) == t.env.get(k))
          for k in sorted(set(env) | set(t.env))),
        ("disk_gb", "recommended_disk_space", cur.get("recommended_disk_space"), t.disk_gb,
         _num_equal(cur.get("recommended_disk_space"), t.disk_gb)),
        ("launch_mode", "runtype", cur.get("runtype"), t.launch_mode, cur.get("runtype") == t.launch_mode),
        ("onstart", "onstart", cur.get("onstart"), t.onstart, (cur.get("onstart") or "") == t.onstart),
    ]
    return _diff(current, items)


def endpoint_changes(desired: Desired, current: dict[str, Any] | None) -> tuple[list[FieldChange], list[str]]:
    want = desired.endpoint_fields()
    cur = current or {}
    items: list[Item] = [("endpoint_state", "endpoint_state", cur.get("endpoint_state"), want["endpoint_state"],
                          cur.get("endpoint_state") == want["endpoint_state"])]
    items += [(f, f, cur.get(f), want[f], _num_equal(cur.get(f), want[f])) for f in ENDPOINT_FIELDS]
    return _diff(current, items)


def workergroup_changes(desired: Desired, current: dict[str, Any] | None,
                        template_hash: str) -> tuple[list[FieldChange], list[str]]:
    w = desired.config.workergroup
    cur = current or {}
    spaced = " ".join(str(cur.get("search_params") or "").split())
    items: list[Item] = [
        ("template_hash", "template_hash", cur.get("template_hash"), template_hash,
         cur.get("template_hash") == template_hash),
        ("search_params", "search_params", cur.get("search_params"), w.search_params,
         spaced == " ".join(w.search_params.split())),
        ("gpu_ram", "gpu_ram", cur.get("gpu_ram"), w.gpu_ram, _num_equal(cur.get("gpu_ram"), w.gpu_ram)),
        ("launch_args", "launch_args", cur.get("launch_args"), w.launch_args,
         (cur.get("launch_args") or "") == w.launch_args),
    ]
    return _diff(current, items)


def _resource(kind: Kind, name: str, current: dict[str, Any] | None,
              diff: tuple[list[FieldChange], list[str]]) -> ResourceChange:
    changes, unread = diff
    action: Action = "create" if current is None else "update" if changes else "noop"
    return ResourceChange(kind=kind, action=action, name=name, id=(current or {}).get("id"),
                          hash_id=(current or {}).get("hash_id"), changes=changes, unread=unread, current=current)


def make_plan(desired: Desired, account: Account) -> Plan:
    template, endpoint, group = match(desired, account)
    name = desired.config.deploy.name
    t = _resource("template", name, template, template_changes(desired, template))
    if t.action == "update":
        t.note = "a new template version (new hash_id): workers move to it"
    e = _resource("endpoint", desired.config.endpoint_name, endpoint, endpoint_changes(desired, endpoint))
    if e.action == "update":
        e.note = "scaling only: no worker restarts"
    next_hash = template["hash_id"] if template is not None and t.action == "noop" else KNOWN_AFTER_APPLY
    g = _resource("workergroup", f"{desired.config.endpoint_name}/workergroup", group,
                  workergroup_changes(desired, group, next_hash))
    if g.action == "update":
        rolls = any(c.field == "template_hash" for c in g.changes)
        g.note = ("rolls workers: inactive ones move to the new template first, active ones after their "
                  "requests" if rolls else "applies to workers recruited from now on")
    return Plan(deployment=name, env=desired.env_name, resources=[t, e, g])


def destroy_plan(desired: Desired, account: Account) -> Plan:
    template, endpoint, group = match(desired, account)
    name = desired.config.deploy.name
    out = []
    rows: list[tuple[Kind, str, dict[str, Any] | None]] = [
        ("workergroup", f"{desired.config.endpoint_name}/workergroup", group),
        ("endpoint", desired.config.endpoint_name, endpoint), ("template", name, template)]
    for kind, rname, row in rows:
        out.append(ResourceChange(kind=kind, action="noop" if row is None else "delete", name=rname,
                                  id=(row or {}).get("id"), hash_id=(row or {}).get("hash_id")))
    out[0].note = "stops recruiting; its workers stop taking requests and are released"
    out[1].note = "the endpoint's name stops routing: callers get 404"
    return Plan(deployment=name, env=desired.env_name, resources=out)
