"""`comfy-worker deploy` against the local Vast control plane, through the real vastai SDK.

Each test starts from an empty account (tests/deploy/conftest.py) and checks what the
account holds and which writes reached it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.conftest import API_KEY, SECRETS, writes

CREATE_ALL = [("POST", "/api/v0/template/"), ("POST", "/api/v0/endptjobs/"), ("POST", "/api/v0/autojobs/")]


async def test_plan_on_empty_account_shows_three_creations_and_writes_nothing(vast, run_deploy):
    r = await run_deploy("plan", "--detailed-exitcode")
    assert r.rc == 2, r.text
    assert "+ template 'comfy-worker'" in r.out
    assert "+ endpoint 'comfy-worker'" in r.out
    assert "+ workergroup" in r.out and "template_hash = (known after apply)" in r.out
    assert "Plan: 3 to add, 0 to change, 0 to destroy." in r.out
    assert vast.writes == []
    plain = await run_deploy("plan")
    assert plain.rc == 0


async def test_apply_creates_all_three_with_full_state_then_a_second_apply_writes_nothing(vast, run_deploy, tmp_path):
    state_file = tmp_path / "state.json"
    r = await run_deploy("apply", "--yes", "--state-out", str(state_file))
    assert r.rc == 0, r.text
    assert writes(vast) == CREATE_ALL

    endpoint = next(iter(vast.endpoints.values()))
    assert endpoint["endpoint_name"] == "comfy-worker"
    # every field sent from the file, none of the SDK's own defaults (cold_workers 5, max_workers 20)
    assert {k: endpoint[k] for k in ("cold_workers", "max_workers", "max_queue_time", "target_queue_time",
                                     "inactivity_timeout")} == {"cold_workers": 1, "max_workers": 4,
                                                                "max_queue_time": 30, "target_queue_time": 10,
                                                                "inactivity_timeout": 600}
    template = next(iter(vast.templates.values()))
    group = next(iter(vast.workergroups.values()))
    assert group["template_hash"] == template["hash_id"] and group["endpoint_id"] == endpoint["id"]
    # no_default: the SDK did not append "verified=True rentable=True rented=False"
    assert group["search_params"] == (
        "gpu_ram>=24 num_gpus=1 inet_down>=500 disk_space>=40 verified=true rentable=true rented=false")
    assert template["tag"] == "v1" and "-p 3000:3000" in template["env"] and template["runtype"] == "args"

    state = json.loads(state_file.read_text())
    assert state["template_hash"] == template["hash_id"]
    assert (state["endpoint_id"], state["workergroup_id"]) == (endpoint["id"], group["id"])
    assert state["applied_at"] and "git_commit" in state

    again = await run_deploy("apply", "--yes")
    assert again.rc == 0, again.text
    assert "No changes" in again.out and "no writes" in again.out
    assert writes(vast) == CREATE_ALL
    assert (await run_deploy("plan", "--detailed-exitcode")).rc == 0


async def test_changed_tag_updates_the_template_and_moves_the_workergroup_only(vast, run_deploy):
    assert (await run_deploy("apply", "--yes")).rc == 0
    old_hash = next(iter(vast.templates.values()))["hash_id"]
    endpoint_before = dict(next(iter(vast.endpoints.values())))

    plan = await run_deploy("plan", "--image-tag", "v2", "--detailed-exitcode")
    assert plan.rc == 2
    assert "~ template 'comfy-worker'" in plan.out and "new hash_id" in plan.out
    assert "endpoint 'comfy-worker' (id" in plan.out and "no changes" in plan.out
    assert "rolls workers" in plan.out

    r = await run_deploy("apply", "--yes", "--image-tag", "v2", "--roll")
    assert r.rc == 0, r.text
    template = next(iter(vast.templates.values()))
    group = next(iter(vast.workergroups.values()))
    assert template["tag"] == "v2" and template["hash_id"] != old_hash
    assert group["template_hash"] == template["hash_id"]
    assert writes(vast)[3:] == [("PUT", "/api/v1/template/"), ("PUT", f"/api/v0/autojobs/{group['id']}/"),
                                ("POST", "/update_workers/")]
    assert next(iter(vast.endpoints.values())) == endpoint_before
    # the workergroup update carried its full state, not just the hash
    body = vast.writes[4]["body"]
    assert body["search_params"] == group["search_params"] and body["gpu_ram"] == 24
    assert (await run_deploy("apply", "--yes", "--image-tag", "v2")).rc == 0
    assert len(vast.writes) == 6


async def test_changed_scaling_field_updates_only_the_endpoint_with_every_field(vast, run_deploy, deploy_file):
    assert (await run_deploy("apply", "--yes")).rc == 0
    deploy_file.write_text(deploy_file.read_text().replace("max_workers = 4 ", "max_workers = 6 "))
    plan = await run_deploy("plan")
    assert "~ max_workers" in plan.out and "4 -> 6" in plan.out and "scaling only" in plan.out
    r = await run_deploy("apply", "--yes")
    assert r.rc == 0, r.text
    endpoint = next(iter(vast.endpoints.values()))
    assert writes(vast)[3:] == [("PUT", f"/api/v0/endptjobs/{endpoint['id']}/")]
    body = vast.writes[3]["body"]
    assert body["max_workers"] == 6
    assert all(body[k] is not None for k in ("min_load", "target_util", "cold_mult", "cold_workers",
                                             "max_queue_time", "target_queue_time", "inactivity_timeout",
                                             "endpoint_name", "endpoint_state"))


async def test_environment_overlay_is_laid_over_the_base(vast, run_deploy):
    r = await run_deploy("apply", "--yes", "--env", "staging")
    assert r.rc == 0, r.text
    endpoint = next(iter(vast.endpoints.values()))
    assert endpoint["endpoint_name"] == "comfy-worker-staging"
    assert (endpoint["max_workers"], endpoint["cold_workers"], endpoint["target_util"]) == (1, 0, 0.9)
    assert next(iter(vast.templates.values()))["name"] == "comfy-worker-staging"
    # the base deployment is a different one: it still has everything to create
    assert (await run_deploy("plan", "--detailed-exitcode")).rc == 2
    bad = await run_deploy("plan", "--env", "prod")
    assert bad.rc == 1 and "no [env.prod] overlay" in bad.err and "local, staging" in bad.err


async def test_unset_variable_is_a_clear_error_before_any_call(vast, run_deploy, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    r = await run_deploy("apply", "--yes")
    assert r.rc == 1
    assert "${HF_TOKEN} (used by template.env.HF_TOKEN) not set" in r.err
    assert vast.calls == [] and vast.writes == []


async def test_invalid_file_names_the_field_and_what_is_allowed(vast, run_deploy, deploy_file):
    deploy_file.write_text(deploy_file.read_text().replace("target_util = 0.9", "target_util = 1.5")
                           .replace('launch_mode = "args"', 'launch_mode = "docker"')
                           .replace("gpu_ram = 24", "gpu_rams = 24"))
    r = await run_deploy("plan")
    assert r.rc == 1
    assert "endpoint.target_util: Input should be less than or equal to 1" in r.err
    assert "template.launch_mode: Input should be 'args', 'ssh' or 'jupyter'" in r.err
    assert "workergroup.gpu_rams: unknown key" in r.err and "workergroup.gpu_ram: required, missing" in r.err
    assert vast.calls == []


async def test_rate_limited_writes_are_retried_after_retry_after(vast, run_deploy):
    vast.rate_limit(3, retry_after=0.05)
    r = await run_deploy("apply", "--yes")
    assert r.rc == 0, r.text
    assert writes(vast) == CREATE_ALL
    assert sum(1 for _, _, status in vast.calls if status == 429) == 3


async def test_rate_limited_past_the_retries_is_a_clear_error(vast, run_deploy):
    vast.rate_limit(100, retry_after=0.01)
    r = await run_deploy("apply", "--yes")
    assert r.rc == 1 and "create_template: Vast still answers 429" in r.err and "Traceback" not in r.err
    assert vast.writes == []


async def test_failure_halfway_then_a_rerun_converges(vast, run_deploy):
    vast.fail("POST", "/api/v0/autojobs/", status=500)
    r = await run_deploy("apply", "--yes")
    assert r.rc == 1
    assert "create_workergroup: HTTP 500" in r.err
    assert len(vast.templates) == 1 and len(vast.endpoints) == 1 and not vast.workergroups
    rerun = await run_deploy("apply", "--yes")
    assert rerun.rc == 0, rerun.text
    assert writes(vast) == CREATE_ALL
    assert "no changes" in rerun.out and "+ workergroup" in rerun.out
    assert (await run_deploy("plan", "--detailed-exitcode")).rc == 0


async def test_destroy_deletes_workergroup_then_endpoint_then_template(vast, run_deploy):
    assert (await run_deploy("apply", "--yes")).rc == 0
    ids = [next(iter(t)) for t in (vast.workergroups, vast.endpoints)]
    refused = await run_deploy("destroy")  # not a terminal, no --yes
    assert refused.rc == 1 and "--yes" in refused.err and len(vast.writes) == 3
    r = await run_deploy("destroy", "--yes")
    assert r.rc == 0, r.text
    assert "does not by itself destroy the instances" in r.out
    assert writes(vast)[3:] == [("DELETE", f"/api/v0/autojobs/{ids[0]}/"), ("DELETE", f"/api/v0/endptjobs/{ids[1]}/"),
                                ("DELETE", "/api/v0/template/")]
    assert vast.state() == {"templates": [], "endpoints": [], "workergroups": []}
    again = await run_deploy("destroy", "--yes")
    assert again.rc == 0 and "nothing to destroy" in again.out and len(vast.writes) == 6


async def test_two_endpoints_with_the_name_is_an_error_not_a_guess(vast, run_deploy):
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for _ in range(2):
            async with http.post(f"{vast.url}/api/v0/endptjobs/", json={"endpoint_name": "comfy-worker"}) as r:
                assert r.status == 200
    r = await run_deploy("plan")
    assert r.rc == 1 and "2 endpoints named 'comfy-worker'" in r.err and "cannot tell which" in r.err


async def test_status_shows_endpoint_workergroup_hash_and_workers(vast, run_deploy):
    empty = await run_deploy("status")
    assert empty.rc == 0 and "not created" in empty.out
    assert (await run_deploy("apply", "--yes")).rc == 0
    r = await run_deploy("status", "--json")
    data = json.loads(r.out)
    template = next(iter(vast.templates.values()))
    assert data["workergroup"]["template_hash"] == template["hash_id"] == data["template"]["hash_id"]
    assert data["endpoint"]["endpoint_state"] == "active" and data["workers"] == []


async def test_secrets_never_appear_in_any_output(vast, run_deploy, tmp_path):
    outputs = []
    state = tmp_path / "state.json"
    for args in (["plan"], ["plan", "--json"], ["apply", "--yes", "--state-out", str(state), "--log-level", "DEBUG"],
                 ["status"], ["status", "--json"], ["destroy", "--yes"]):
        r = await run_deploy(*args)
        assert r.rc == 0, r.text
        outputs.append(r.text)
    outputs.append(state.read_text())
    text = "\n".join(outputs)
    assert "<from $HF_TOKEN>" in text and "<from $S3_SECRET>" in text
    for secret in [API_KEY, *SECRETS.values()]:
        assert secret not in text
    # ...while the account did receive them
    assert any(SECRETS["HF_TOKEN"] in json.dumps(w["body"]) for w in vast.writes)


async def test_a_refused_key_is_named_by_its_source_not_its_value(vast, run_deploy, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "vk-wrong-key-987654321")
    r = await run_deploy("plan")
    assert r.rc == 1
    assert "refused the API key from $VAST_API_KEY (HTTP 401)" in r.err
    assert "vk-wrong-key-987654321" not in r.text


async def test_vast_url_equal_to_the_console_url_is_refused(vast, run_deploy, monkeypatch, tmp_path: Path):
    """The SDK reads VAST_URL at import: a subprocess shows the refusal with a fresh import."""
    env = dict(os.environ, VAST_URL=str(vast.url))
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker", "deploy", "plan", "--file",
                         str(tmp_path / "deploy.toml"), "--vast-url", str(vast.url)],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "VAST_URL is set" in proc.stderr and "Unset VAST_URL" in proc.stderr


async def test_fields_the_account_does_not_report_are_not_compared_but_always_sent(vast, run_deploy, deploy_file):
    """Vast's documented show-endpoints row has no max_queue_time, target_queue_time,
    inactivity_timeout or min_cold_load: a second apply must still write nothing."""
    assert (await run_deploy("apply", "--yes")).rc == 0
    (endpoint,) = vast.endpoints.values()
    for key in ("max_queue_time", "target_queue_time", "inactivity_timeout", "min_cold_load"):
        del endpoint[key]
    plan = await run_deploy("plan", "--detailed-exitcode")
    assert plan.rc == 0, plan.text
    assert "not reported by Vast, so not compared" in plan.out and "max_queue_time" in plan.out
    deploy_file.write_text(deploy_file.read_text().replace("max_workers = 4 ", "max_workers = 5 "))
    assert (await run_deploy("apply", "--yes")).rc == 0
    assert vast.writes[-1]["body"]["max_queue_time"] == 30  # the full state, unread fields included
