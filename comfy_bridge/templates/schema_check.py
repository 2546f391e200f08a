"""One way to check a value against a JSON Schema and say, per parameter, what is wrong.

Template parameters (comfy_bridge/templates/store.py) and MCP tool arguments
(worker/mcp/tools.py) are both checked here, with `jsonschema` against the schema that is
published (`GET /workflows`, the MCP tool list), so what a caller reads is exactly what is
enforced. Each problem names its parameter (a dotted path for nested values) and says
what is allowed, in the same words whichever caller asked.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jsonschema

_ENUM_SHOWN = 50
_KINDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
          "object": "an object", "array": "an array"}


class Problem(NamedTuple):
    param: str
    message: str


def _show(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _type_message(kinds: Any, value: Any) -> str:
    wanted = " or ".join(_KINDS.get(k, k) for k in (kinds if isinstance(kinds, list) else [kinds]))
    given = "a boolean" if isinstance(value, bool) else repr(value) if isinstance(value, str) else type(value).__name__
    return f"must be {wanted}, not {given}"


def _message(err: jsonschema.ValidationError) -> str:
    v = err.validator_value
    simple = {
        "minimum": f"must be >= {_show(v)}", "maximum": f"must be <= {_show(v)}",
        "exclusiveMinimum": f"must be > {_show(v)}", "exclusiveMaximum": f"must be < {_show(v)}",
        "multipleOf": f"must be a multiple of {_show(v)}",
        "minLength": f"must be at least {v} characters", "maxLength": f"must be at most {v} characters",
        "pattern": f"must match {v}",
    }
    if err.validator in simple:
        return simple[str(err.validator)]
    if err.validator == "type":
        return _type_message(v, err.instance)
    if err.validator == "enum":
        return "must be one of: " + ", ".join(map(str, v[:_ENUM_SHOWN])) + (" ..." if len(v) > _ENUM_SHOWN else "")
    return err.message


def _split(err: jsonschema.ValidationError) -> list[Problem]:
    """One problem per parameter: an unknown or missing key is named, not the object."""
    where = [str(p) for p in err.absolute_path]
    if err.validator == "required" and isinstance(err.instance, dict):
        return [Problem(".".join([*where, k]), "is required") for k in err.validator_value if k not in err.instance]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict) and err.validator_value is False:
        known = err.schema.get("properties", {})
        return [Problem(".".join([*where, str(k)]), "unknown parameter") for k in err.instance if k not in known]
    return [Problem(".".join(where), _message(err))]


def problems(schema: dict[str, Any], instance: Any) -> list[Problem]:
    """Every problem of `instance` under `schema`, at most one per parameter, unknown
    parameters first, then in the order the schema lists its properties."""
    order = {name: i for i, name in enumerate(schema.get("properties", {}))}
    found: dict[str, Problem] = {}
    for err in jsonschema.Draft202012Validator(schema).iter_errors(instance):
        for problem in _split(err):
            found.setdefault(problem.param, problem)
    return sorted(found.values(), key=lambda p: (order.get(p.param.split(".")[0], -1), p.param))
