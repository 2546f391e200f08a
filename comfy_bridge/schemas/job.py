"""Wire schemas of `POST /generate/sync`: the request contract of PRODUCT.md.

Field names follow Vast's ComfyUI template (`workflow_json`, `modifier`, `modifications`,
`s3`, `webhook`) and accept RunPod worker-comfyui's (`workflow`, `images`), so a backend
can switch to this worker without changing what it sends.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


def new_request_id() -> str:
    return uuid.uuid4().hex


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputImage(_Model):
    """A file placed into ComfyUI's input folder before the prompt runs."""

    name: str = Field(min_length=1, max_length=255)
    image: str = Field(
        min_length=1,
        description="base64, a data: URI, an https:// URL or s3://bucket/key",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in (".", "..") or v.startswith(".") or "\x00" in v:
            raise ValueError(
                f"image name {v!r} must be a plain file name (no '/', '\\' or leading '.')"
            )
        return v


class S3Destination(_Model):
    """Where outputs go. Missing fields fall back to the S3_* environment settings."""

    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    endpoint_url: str | None = None
    bucket_name: str | None = None
    region: str | None = None
    prefix: str | None = None


class WebhookTarget(_Model):
    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret: SecretStr | None = None
    extra_params: dict[str, Any] = Field(default_factory=dict)


class OutputOptions(_Model):
    """Optional conversion of image outputs (Pillow); other kinds pass through as made."""

    format: Literal["png", "webp", "jpeg"] | None = None
    quality: int = Field(default=90, ge=1, le=100)


class JobInput(_Model):
    """The `input` object of a request."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    request_id: str = Field(default_factory=new_request_id)
    workflow_json: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("workflow_json", "workflow")
    )
    modifier: str | None = None
    modifications: dict[str, Any] = Field(default_factory=dict)
    images: list[InputImage] = Field(default_factory=list)
    s3: S3Destination | None = None
    webhook: WebhookTarget | None = None
    return_outputs_as_base64: bool | None = None
    output: OutputOptions = Field(default_factory=OutputOptions)
    timeout_s: float | None = Field(default=None, gt=0)
    # POST /generate/stream only: send small JPEG latent previews as `preview` events.
    previews: bool = False
    # This run's own id: its input folder, output folder and S3 keys carry it, so two runs
    # with the same request_id (a resend after the first ended) never share a file.
    _run_id: str = PrivateAttr(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def run_key(self) -> str:
        """`request_id/run_id`: the per-run path segment of folders and S3 keys."""
        return f"{self.request_id}/{self._run_id}"

    @field_validator("request_id", mode="before")
    @classmethod
    def _request_id(cls, v: Any) -> Any:
        if v is None or v == "":
            return new_request_id()
        if not isinstance(v, str) or not _REQUEST_ID_RE.match(v):
            raise ValueError(
                "request_id must be 1-128 characters of letters, digits, '.', '_' or '-' "
                "(it names output files, so no path characters)"
            )
        return v

    @field_validator("workflow_json", mode="before")
    @classmethod
    def _graph_is_object(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, dict):
            raise ValueError(
                "workflow_json must be a ComfyUI API-format graph: an object of "
                '{"node_id": {"class_type": ..., "inputs": {...}}} (export it with '
                "'Save (API Format)')"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "JobInput":
        has_graph = self.workflow_json is not None
        has_template = bool(self.modifier)
        if has_graph and has_template:
            raise ValueError(
                "give either workflow_json (alias workflow) or modifier + modifications, not both"
            )
        if not has_graph and not has_template:
            raise ValueError(
                "missing workflow: give workflow_json (alias workflow) with an API-format "
                "graph, or modifier naming a template in workflows/ with its modifications"
            )
        return self


class GenerateRequest(_Model):
    """The body the bridge takes: the PyWorker `payload`, i.e. `{"input": {...}}`."""

    model_config = ConfigDict(extra="ignore")

    input: JobInput


class OutputFile(BaseModel):
    """One file a node produced, delivered one way or another."""

    filename: str
    node_id: str
    output_type: str = Field(description="the key ComfyUI used: images, gifs, videos, audio...")
    mimetype: str
    bytes: int
    url: str | None = None
    s3_key: str | None = None
    data: str | None = Field(default=None, description="base64 when returned inline")
    upload_error: str | None = None
    spool_key: str | None = Field(
        default=None,
        description="kept on the worker's spool under this key: GET /outputs/{spool_key} on the "
        "bridge, or the worker's signed POST /outputs/fetch with {\"spool_key\": ...}",
    )


class Timings(BaseModel):
    queued_ms: float = 0.0
    inputs_ms: float = 0.0
    execution_ms: float = 0.0
    outputs_ms: float = 0.0
    total_ms: float = 0.0


class GenerateResponse(BaseModel):
    id: str
    status: Literal["success"] = "success"
    prompt_id: str
    output: list[OutputFile]
    timings: Timings
    workload: float | None = None


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    retriable: bool


class FailureResponse(BaseModel):
    id: str | None
    status: Literal["failed"] = "failed"
    error: ErrorBody
    prompt_id: str | None = None
    output: list[OutputFile] | None = None
