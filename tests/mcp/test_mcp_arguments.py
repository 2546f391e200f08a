"""MCP tool arguments and template parameters are checked by one function
(comfy_bridge/templates/schema_check.py): the same problems, in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_bridge.errors import BadRequest
from comfy_bridge.templates.store import TemplateStore
from worker.mcp.tools import RUN_WORKFLOW_SCHEMA, argument_error

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


@pytest.mark.parametrize("arguments", [{"steps": 0}, {"width": 1001}, {"prompt": 7}, {"colour": "red"}])
def test_same_words_as_the_template_check(arguments):
    store = TemplateStore(WORKFLOWS)
    with pytest.raises(BadRequest) as info:
        store.expand("sdxl_t2i", arguments)
    [entry] = info.value.details["errors"]
    assert argument_error(store.schema("sdxl_t2i"), arguments) == (
        f"invalid arguments: parameter {entry['param']!r}: {entry['message']}")


def test_nested_and_missing_arguments_named():
    problem = argument_error(RUN_WORKFLOW_SCHEMA, {"images": [{"name": "a.png", "image": "", "x": 1}]})
    assert problem is not None
    assert "parameter 'workflow': is required" in problem
    assert "parameter 'images.0.image': must be at least 1 characters" in problem
    assert "parameter 'images.0.x': unknown parameter" in problem
    assert argument_error(RUN_WORKFLOW_SCHEMA, {"workflow": {"1": {}}}) is None
