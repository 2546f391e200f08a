"""Schemas of a template's parameter spec (`workflows/NAME.params.json`) and the list route.

A template is two files side by side in `workflows/`:

- `NAME.json`: an API-format ComfyUI graph ("Save (API Format)"), runnable as is with
  its defaults;
- `NAME.params.json`: what a caller may change, and where each value goes:

```json
{
  "description": "SDXL text to image",
  "parameters": {
    "prompt": {"type": "string", "default": "a lighthouse", "max_length": 4000,
               "targets": ["6.text"]},
    "seed":   {"type": "integer", "minimum": 0, "maximum": 18446744073709551615,
               "randomize": true, "targets": ["3.seed"]},
    "width":  {"type": "integer", "default": 1024, "minimum": 512, "maximum": 2048,
               "multiple_of": 8, "targets": ["5.width"]},
    "sampler_name": {"type": "string", "default": "euler", "enum": ["euler", "..."],
               "targets": ["3.sampler_name"]}
  }
}
```

`type` is string, integer, number or boolean; bounds are `minimum`/`maximum`,
`multiple_of`, `enum`, `min_length`/`max_length`, `pattern` (a regex the whole string
must match). A parameter without a `default` is `required`, unless `randomize` (integers:
a fresh random value in bounds each request, for seeds). `targets` are `"node_id.input"`
strings, one or more, each naming an input that exists in the graph.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["string", "integer", "number", "boolean"]
    description: str = ""
    default: Any = None
    randomize: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    multiple_of: int | float | None = Field(default=None, gt=0)
    enum: list[Any] | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    pattern: str | None = None
    targets: list[str] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            node, dot, name = t.rpartition(".")
            if not dot or not node or not name:
                raise ValueError(f"target {t!r} must be 'node_id.input_name'")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v

    @model_validator(mode="after")
    def _randomize(self) -> ParamSpec:
        if self.randomize and (
            self.type != "integer" or self.minimum is None or self.maximum is None
        ):
            raise ValueError("randomize needs an integer parameter with minimum and maximum")
        return self

    @property
    def required(self) -> bool:
        return self.default is None and not self.randomize

    def split_targets(self) -> list[tuple[str, str]]:
        return [(node, name) for node, _, name in (t.rpartition(".") for t in self.targets)]


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    parameters: dict[str, ParamSpec] = Field(default_factory=dict)


class TemplateInfo(BaseModel):
    """One entry of GET /workflows: what a caller needs to fill the template."""

    name: str
    description: str
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    graph: dict[str, Any] | None = None

    model_config = ConfigDict(populate_by_name=True)


class TemplateList(BaseModel):
    workflows: list[TemplateInfo]
