"""Converge the account to deploy.toml, in a safe order, and destroy it in the reverse one.

apply: template (created, or updated: a new hash_id), then the endpoint, then the
workergroup pointed at the template's current hash; with `roll`, a rolling update of the
workergroup's workers when its template changed. Each write sends the full desired state
(the SDK sends null for anything left out). Nothing is written for a resource already as
the file says, so a second run writes nothing; since resources are found by name each
run, a run interrupted halfway is finished by the next one.

destroy: workergroup, endpoint, template, each only if it exists.
The record of what was applied (ids, hash, git commit, time) is `AppliedState`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from typing import Any

from pydantic import BaseModel, Field

from worker.deploy.config import Desired
from worker.deploy.plan import Plan, workergroup_changes
from worker.deploy.vast_api import VastApi


class AppliedState(BaseModel):
    deployment: str
    env: str | None
    file: str
    template_id: int | None = None
    template_hash: str | None = None
    endpoint_id: int | None = None
    endpoint_name: str
    workergroup_id: int | None = None
    rolled: bool = False
    git_commit: str | None = None
    applied_at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    actions: list[str] = Field(default_factory=list)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


async def apply(desired: Desired, api: VastApi, plan: Plan, *, roll: bool = False, say: Any = print) -> AppliedState:
    name = desired.config.deploy.name
    state = AppliedState(deployment=name, env=desired.env_name, file=desired.file,
                         endpoint_name=desired.config.endpoint_name,
                         git_commit=await asyncio.to_thread(_git_commit))

    def did(text: str) -> None:
        state.actions.append(text)
        say(desired.redact(text))

    # 1. The template: what workers run. An update is a new version with a new hash.
    t = plan.of("template")
    if t.action == "create":
        made = await api.create_template(desired.template_fields())
        did(f"template {name!r} created (id {made.get('id')}, hash {made.get('hash_id')})")
    elif t.action == "update":
        assert t.hash_id is not None
        made = await api.update_template(t.hash_id, desired.template_fields())
        did(f"template {name!r} updated: hash {t.hash_id} -> {made.get('hash_id')}")
    else:
        made = {"id": t.id, "hash_id": t.hash_id}
    state.template_id, state.template_hash = made.get("id"), made.get("hash_id")
    if not state.template_hash:
        raise RuntimeError(f"Vast's answer for template {name!r} carried no hash_id")

    # 2. The endpoint: scaling, full state every time.
    e = plan.of("endpoint")
    fields = desired.endpoint_fields()
    if e.action == "create":
        state.endpoint_id = await api.create_endpoint(fields)
        did(f"endpoint {fields['endpoint_name']!r} created (id {state.endpoint_id})")
        if fields["endpoint_state"] != "active":  # create takes no state: set it
            await api.update_endpoint(state.endpoint_id, fields)
    elif e.action == "update":
        assert e.id is not None
        await api.update_endpoint(e.id, fields)
        state.endpoint_id = e.id
        did(f"endpoint {fields['endpoint_name']!r} updated (id {e.id}): " + ", ".join(c.field for c in e.changes))
    else:
        state.endpoint_id = e.id
    assert state.endpoint_id is not None

    # 3. The workergroup, pointed at the template's hash as it is now.
    g = plan.of("workergroup")
    group_fields = desired.workergroup_fields(template_hash=state.template_hash, template_id=state.template_id,
                                              endpoint_id=state.endpoint_id)
    changes, _ = workergroup_changes(desired, g.current, state.template_hash)
    if g.current is None:
        state.workergroup_id = await api.create_workergroup(group_fields)
        did(f"workergroup created (id {state.workergroup_id}) on endpoint {state.endpoint_id}, "
            f"template {state.template_hash}")
    elif changes:
        assert g.id is not None
        state.workergroup_id = g.id
        await api.update_workergroup(g.id, group_fields)
        did(f"workergroup {g.id} updated: " + ", ".join(c.field for c in changes))
        if roll and any(c.field == "template_hash" for c in changes):
            await api.update_workers(g.id)
            state.rolled = True
            did(f"workergroup {g.id}: rolling update requested")
    else:
        state.workergroup_id = g.id
    if not state.actions:
        say("nothing to do: the account matches the file (no writes)")
    return state


async def destroy(desired: Desired, api: VastApi, plan: Plan, *, say: Any = print) -> list[str]:
    done = []
    for r in plan.resources:
        if r.action != "delete" or r.id is None:
            continue
        if r.kind == "workergroup":
            await api.delete_workergroup(r.id)
        elif r.kind == "endpoint":
            await api.delete_endpoint(r.id)
        else:
            await api.delete_template(r.id)
        done.append(f"{r.kind} {r.name!r} (id {r.id}) deleted")
        say(done[-1])
    return done

