"""build_app: the bridge's aiohttp application, standalone or inside the worker.

It owns one ComfyClient (opened on startup, closed on cleanup) and one JobRunner; the
IO collaborators (input staging, templates, webhooks) are plugged in when their modules
are installed, so the bridge runs in front of any ComfyUI with no other setup.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from aiohttp import web

from comfy_bridge import logs
from comfy_bridge.comfy.client import ComfyClient
from comfy_bridge.jobs.api_router import BridgeRoutes
from comfy_bridge.jobs.serving import JobRunner, Picker
from comfy_bridge.settings import BridgeSettings

log = logs.get(__name__)

CLIENT_KEY = web.AppKey("comfy_client", ComfyClient)
RUNNER_KEY = web.AppKey("job_runner", JobRunner)
SUPERVISOR_KEY = web.AppKey("supervisor", object)


def build_app(
    settings: BridgeSettings,
    *,
    client: ComfyClient | None = None,
    destinations: Picker | None = None,
    workload_fn: Callable[[dict[str, Any]], float] | None = None,
    supervisor: Any = None,
) -> web.Application:
    """`destinations(job, settings) -> Destination` overrides delivery.select.pick."""
    client = client or ComfyClient(settings.comfyui_url)
    runner = JobRunner(
        settings,
        client,
        stager=_optional("comfy_bridge.inputs", "InputStager", settings, client),
        templates=_optional("comfy_bridge.templates", "TemplateStore", settings),
        webhooks=_optional("comfy_bridge.webhooks", "WebhookSender", settings),
        workload_fn=workload_fn,
        on_fatal=getattr(supervisor, "on_fatal", None),
        picker=destinations,
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[CLIENT_KEY] = client
    app[RUNNER_KEY] = runner
    if supervisor is not None:
        app[SUPERVISOR_KEY] = supervisor
    BridgeRoutes(runner, client, settings.max_body_bytes).register(app)

    async def start(_: web.Application) -> None:
        await client.start()

    async def stop(_: web.Application) -> None:
        await client.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def _optional(module: str, name: str, *args: Any) -> Any:
    """An IO collaborator if its module is installed, else None (the runner copes)."""
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    try:
        return factory(*args)
    except TypeError as exc:
        log.warning("could not construct %s.%s: %s", module, name, exc)
        return None
