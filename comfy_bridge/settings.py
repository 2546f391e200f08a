"""Settings of the bridge, read from the environment (and CLI flags that override them).

Every knob has a default that works on a Vast host and on a developer's box; the
variable names are in the README. Secrets are SecretStr so they never print.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class S3Settings(BaseSettings):
    """Default output bucket; a request's `s3` object overrides any field."""

    model_config = SettingsConfigDict(env_prefix="S3_", extra="ignore")

    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    endpoint_url: str | None = None
    bucket_name: str | None = None
    region: str | None = None
    prefix: str = ""
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    retries: int = Field(default=4, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    multipart_threshold_bytes: int = 8 * 1024 * 1024
    # Parallel part/file uploads per client (IO): enough to fill a link with 2 MB images.
    max_concurrency: int = Field(default=16, ge=1, le=64)


class BridgeSettings(BaseSettings):
    """How the bridge reaches ComfyUI and what it allows callers to do."""

    model_config = SettingsConfigDict(env_prefix="COMFY_BRIDGE_", extra="ignore")

    comfyui_url: str = "http://127.0.0.1:18188"
    # Where ComfyUI keeps its folders; when known, outputs are read from disk instead of /view.
    comfyui_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 18288

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    default_timeout_s: float = Field(default=600.0, gt=0)
    max_timeout_s: float = Field(default=3600.0, gt=0)
    # Inline (base64) outputs are refused past this size; they stay on disk for S3 instead.
    max_inline_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    max_input_images: int = Field(default=16, ge=0)
    max_input_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    input_fetch_timeout_s: float = Field(default=30.0, gt=0)
    allow_private_urls: bool = False
    # Buckets `s3://` inputs may read with the worker's own credentials (comma list); unset:
    # only S3_BUCKET_NAME. A request with its own s3 keys reads what those keys allow.
    s3_input_buckets: Annotated[list[str] | None, NoDecode] = None

    webhook_secret: SecretStr | None = None
    webhook_retries: int = Field(default=5, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # First retry delay; doubles per attempt, capped at 60 s (IO).
    webhook_retry_backoff_s: float = Field(default=1.0, ge=0)

    workflows_dir: Path = Path(__file__).resolve().parent.parent / "workflows"
    # Outputs kept on disk when delivery failed, so nothing made is lost.
    spool_dir: Path = Path("/tmp/comfy-bridge-spool")
    spool_budget_bytes: int = Field(default=2 * 1024**3, ge=0)
    # Spooled outputs of a failed S3 upload are re-uploaded in the background: the first try
    # after S3_RETRY_BACKOFF_S, doubling up to this, for redeliver_for_s (delivery/redeliver.py).
    redeliver_max_backoff_s: float = Field(default=60.0, gt=0)
    redeliver_for_s: float = Field(default=24 * 3600.0, gt=0)
    # Webhook bodies carry inline (base64) data only up to this many bytes of outputs in all;
    # above it, the entries without `data` (S3 outputs carry their URLs either way).
    webhook_max_inline_bytes: int = Field(default=4 * 1024 * 1024, ge=0)

    oom_retries: int = Field(default=1, ge=0)
    # A running prompt silent this long makes the bridge probe ComfyUI (jobs/watchdog.py);
    # only this many failed probes in a row make it hung (a slow node is left to its deadline).
    watchdog_silence_s: float = Field(default=120.0, gt=0)
    watchdog_probes: int = Field(default=3, ge=1)

    # ComfyUI as a supervised child, when launched from comfyui_path (RELIABILITY).
    comfyui_log_path: Path | None = None  # default: <comfyui_path>/comfyui.log
    comfyui_extra_args: str = ""  # shell-quoted flags appended to ComfyUI's main.py
    comfyui_max_crashes: int = Field(default=3, ge=1)  # this many crashes within the window...
    comfyui_crash_window_s: float = Field(default=600.0, gt=0)  # ...and the worker gives up
    comfyui_start_timeout_s: float = Field(default=300.0, gt=0)
    # Load the gc.freeze pack last (comfy_bridge/comfyui/gc_freeze.py): no 10-second GC pause.
    comfyui_gc_freeze: bool = True
    # SIGTERM: seconds in-flight requests get to finish before cleanup and exit.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # POST /generate/stream (comfy_bridge/jobs/streaming.py): a comment line after this
    # many silent seconds; at most one latent preview per interval, downscaled to max_px.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    stream_preview_interval_s: float = Field(default=1.0, ge=0)
    stream_preview_max_px: int = Field(default=256, ge=16, le=2048)

    s3: S3Settings = Field(default_factory=S3Settings)

    @field_validator("s3_input_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    def worker_input_buckets(self) -> set[str]:
        """Buckets an `s3://` input may be read from with the worker's own credentials."""
        if self.s3_input_buckets is not None:
            return set(self.s3_input_buckets)
        return {self.s3.bucket_name} if self.s3.bucket_name else set()

    def comfyui_folder(self, kind: Literal["output", "input", "temp"]) -> Path | None:
        """Where ComfyUI really keeps its output/input/temp files, as ComfyUI decides it:
        `--<kind>-directory`, else `--base-directory`, in comfyui_extra_args win over
        `<comfyui_path>/<kind>`. None when the bridge does not know ComfyUI's disk."""
        flags = _cli_flags(self.comfyui_extra_args)
        if folder := flags.get(f"--{kind}-directory"):
            return Path(folder)
        base = flags.get("--base-directory") or self.comfyui_path
        return Path(base) / kind if base else None


def _cli_flags(args: str) -> dict[str, str]:
    """`--flag value` and `--flag=value` pairs of a shell-quoted argument string."""
    words = shlex.split(args or "")
    flags: dict[str, str] = {}
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, eq, value = word.partition("=")
        if eq:
            flags[name] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[name] = words[i + 1]
    return flags
