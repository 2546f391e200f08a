"""Routes that let a backend discover templates and their parameters.

    GET /workflows          {"workflows": [{name, description, schema}]}
    GET /workflows/{name}   {name, description, schema, graph}   (404 when unknown)

`schema` is a JSON Schema (2020-12) of `modifications`, so a backend can validate or
generate forms before it sends a request.
"""

from __future__ import annotations

from aiohttp import web

from comfy_bridge.errors import UnknownTemplate
from comfy_bridge.templates.protocol import TemplateInfo, TemplateList
from comfy_bridge.templates.store import TemplateStore


class TemplateRoutes:
    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    async def list_templates(self, request: web.Request) -> web.Response:
        body = TemplateList(workflows=[TemplateInfo.model_validate(t) for t in self.store.list()])
        return web.json_response(text=body.model_dump_json(by_alias=True, exclude_none=True))

    async def get_template(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            template = self.store.get(name)
        except UnknownTemplate as err:
            body = {"id": None, "status": "failed", "error": err.to_dict()}
            return web.json_response(body, status=404)
        info = TemplateInfo(
            name=template.name,
            description=template.spec.description,
            schema=template.schema(),
            graph=template.graph,
        )
        return web.json_response(text=info.model_dump_json(by_alias=True, exclude_none=True))

    def register(self, app: web.Application) -> None:
        app.router.add_get("/workflows", self.list_templates)
        app.router.add_get("/workflows/{name}", self.get_template)


def add_routes(app: web.Application, store: TemplateStore) -> None:
    TemplateRoutes(store).register(app)
