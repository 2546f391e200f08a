"""The Vast calls of `comfy-worker deploy`, through the real `vastai` SDK, off the event loop.

What the SDK (vastai 1.9.1: its endpoint and offer calls) does that
matters here:
- console API at `server_url` (templates: GET /api/v0/template/, POST /api/v0/template/,
  PUT /api/v1/template/, DELETE /api/v0/template/; endpoints: /api/v0/endptjobs/[id/];
  workergroups: /api/v0/autojobs/[id/]), key as `Authorization: Bearer`.
- autoscaler calls (get_endpoint_workers, update_workers) go to run.vast.ai when the
  client's URL is the SDK default, else to the client's URL: a second client made with
  the autoscaler URL reaches it. `VAST_URL` becomes the SDK default at import time, so a
  VAST_URL equal to our console URL would send autoscaler calls to run.vast.ai: refused.
- the SDK retries 429 itself (up to `retry`); it is built with retry=1 here and
  tenacity waits out Retry-After, so the wait is ours, bounded and logged.
- creates answer `{"success": true, "result": id}` (endpoints, workergroups) or
  `{"success": true, "template": {...}}`; a template update answers the new version.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

import requests
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from comfy_bridge import logs
from comfy_bridge.errors import ControlPlaneRefused, ControlPlaneUnauthorized, DeployConfigInvalid, DeployFailed

log = logs.get(__name__)

DEFAULT_VAST_URL = "https://console.vast.ai"
DEFAULT_AUTOSCALER_URL = "https://run.vast.ai"
MAX_RETRY_AFTER_S = 60.0
RATE_LIMIT_ATTEMPTS = 6


class ApiKey(BaseModel):
    value: str = Field(repr=False)
    source: str  # where it came from, safe to print

    @classmethod
    def find(cls) -> "ApiKey":
        if os.environ.get("VAST_API_KEY"):
            return cls(value=os.environ["VAST_API_KEY"], source="$VAST_API_KEY")
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        for path in (config / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
            if path.is_file() and path.read_text().strip():
                return cls(value=path.read_text().strip(), source=str(path))
        raise DeployConfigInvalid(
            "no Vast API key: set VAST_API_KEY (in CI: a secret) or save it with `vastai set api-key`")


class Account(BaseModel):
    """What the account holds that this deployment may manage."""

    templates: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    workergroups: list[dict[str, Any]]


class RateLimited(Exception):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"rate limited, retry after {wait_s}s")
        self.wait_s = wait_s


def _wait_retry_after(state: Any) -> float:
    exc = state.outcome.exception()
    return min(getattr(exc, "wait_s", 1.0), MAX_RETRY_AFTER_S)


class VastApi:
    """One deployment's view of a Vast account. Every write is counted in `writes`."""

    def __init__(self, key: ApiKey, *, vast_url: str = DEFAULT_VAST_URL,
                 autoscaler_url: str = DEFAULT_AUTOSCALER_URL) -> None:
        from vastai import VastAI
        from vastai.api import client as sdk_client

        self.key = key
        self.vast_url = vast_url.rstrip("/")
        self.autoscaler_url = autoscaler_url.rstrip("/")
        if self.vast_url == sdk_client.server_url_default.rstrip("/") and self.vast_url != DEFAULT_VAST_URL:
            raise DeployConfigInvalid(
                f"VAST_URL is set to {self.vast_url}: the vastai SDK then sends autoscaler calls to "
                f"{DEFAULT_AUTOSCALER_URL}. Unset VAST_URL and use --vast-url / --autoscaler-url instead.")
        self.console = VastAI(api_key=key.value, server_url=self.vast_url, retry=1, quiet=True, raw=True)
        self.autoscaler = VastAI(api_key=key.value, server_url=self.autoscaler_url, retry=1, quiet=True, raw=True)
        self.writes: list[str] = []

    # --- the one way every call goes ------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, write: bool = False, **kw: Any) -> Any:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, RateLimited)),
                wait=_wait_retry_after, stop=stop_after_attempt(RATE_LIMIT_ATTEMPTS), reraise=True,
            ):
                with attempt:
                    n = attempt.retry_state.attempt_number
                    if n > 1:
                        log.info("retrying after 429", extra={"fields": {"call": what, "attempt": n}})
                    result = await asyncio.to_thread(self._sync, what, fn, *args, **kw)
        except RateLimited as e:
            raise ControlPlaneRefused(
                f"{what}: Vast still answers 429 (rate limited) after {RATE_LIMIT_ATTEMPTS} tries; nothing more was "
                f"sent. Run again in a minute (last Retry-After: {e.wait_s:g} s).", retriable=True) from None
        if write:
            self.writes.append(what)
        if isinstance(result, dict) and (result.get("success") is False or set(result) == {"error"}):
            raise ControlPlaneRefused(f"{what}: Vast answered {self._text(result)}")
        return result

    def _sync(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except requests.HTTPError as e:
            r = e.response
            status = r.status_code if r is not None else 0
            if status == 429:
                try:
                    raise RateLimited(float(r.headers.get("Retry-After", "1"))) from None
                except ValueError:
                    raise RateLimited(1.0) from None
            body = self._text(r.text[:300] if r is not None else "")
            if status in (401, 403):
                raise ControlPlaneUnauthorized(
                    f"{what}: Vast refused the API key from {self.key.source} (HTTP {status}). Check that it is "
                    "current and allowed to manage serverless endpoints (Vast console > Keys), then set "
                    "VAST_API_KEY.", source=self.key.source) from None
            raise ControlPlaneRefused(f"{what}: HTTP {status} from Vast: {body}", http_status=status) from None
        except (requests.ConnectionError, requests.Timeout):
            raise DeployFailed(f"{what}: cannot reach {self.vast_url} / {self.autoscaler_url} "
                               "(check --vast-url / --autoscaler-url and the network)", retriable=True) from None
        except ValueError as e:  # e.g. update_template: no template with this hash
            raise ControlPlaneRefused(f"{what}: {self._text(str(e))}") from None

    def _text(self, value: Any) -> str:
        return str(value).replace(self.key.value, "<api key>")

    # --- reads ------------------------------------------------------------------------------

    async def read(self, template_name: str) -> Account:
        user = await self._call("show_user", self.console.show_user)
        templates = await self._call("search_templates", self.console.search_templates,
                                     {"name": {"eq": template_name}})
        own = [t for t in templates or [] if t.get("name") == template_name
               and (user.get("id") is None or t.get("creator_id") == user.get("id"))]
        endpoints = await self._call("show_endpoints", self.console.show_endpoints)
        groups = await self._call("show_workergroups", self.console.show_workergroups)
        return Account(templates=own, endpoints=list(endpoints or []), workergroups=list(groups or []))

    async def endpoint_workers(self, endpoint_id: int) -> list[dict[str, Any]]:
        workers = await self._call("get_endpoint_workers", self.autoscaler.get_endpoint_workers, endpoint_id)
        return list(workers or []) if isinstance(workers, list) else list(workers.get("workers") or [])

    # --- writes -----------------------------------------------------------------------------

    async def create_template(self, fields: dict[str, Any]) -> dict[str, Any]:
        r = await self._call("create_template", self.console.create_template, write=True, **fields)
        return dict(r.get("template") or {})

    async def update_template(self, hash_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        r = await self._call("update_template", self.console.update_template, hash_id, write=True, **fields)
        return dict(r.get("template") or {})

    async def delete_template(self, template_id: int) -> None:
        await self._call("delete_template", self.console.delete_template, template_id=template_id, write=True)

    async def create_endpoint(self, fields: dict[str, Any]) -> int:
        create = {k: v for k, v in fields.items() if k != "endpoint_state"}
        r = await self._call("create_endpoint", self.console.create_endpoint, write=True, **create)
        return int(r.get("result", r.get("id")))

    async def update_endpoint(self, endpoint_id: int, fields: dict[str, Any]) -> None:
        await self._call("update_endpoint", self.console.update_endpoint, endpoint_id, write=True, **fields)

    async def delete_endpoint(self, endpoint_id: int) -> None:
        await self._call("delete_endpoint", self.console.delete_endpoint, endpoint_id, write=True)

    async def create_workergroup(self, fields: dict[str, Any]) -> int:
        r = await self._call("create_workergroup", self.console.create_workergroup, write=True, **fields)
        return int(r.get("result", r.get("id")))

    async def update_workergroup(self, group_id: int, fields: dict[str, Any]) -> None:
        await self._call("update_workergroup", self.console.update_workergroup, group_id, write=True, **fields)

    async def delete_workergroup(self, group_id: int) -> None:
        await self._call("delete_workergroup", self.console.delete_workergroup, group_id, write=True)

    async def update_workers(self, group_id: int) -> None:
        await self._call("update_workers", self.autoscaler.update_workers, group_id, write=True)
