"""models_manifest.toml: the one reviewed file that says what a worker runs.

Which ComfyUI (version and commit), which custom node packs at which commits (and which
node classes each must provide once loaded), which model files with which checksums,
and which workflow benchmarks the worker. Every field is validated here, and a bad file
is reported line by line (`models[1] (checkpoints/x.safetensors).sha256: ...`) so a
reviewer sees what is wrong without reading a traceback.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comfy_bridge.errors import ManifestInvalid

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "models_manifest.toml"
COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI"

_HEX_REF = re.compile(r"^[0-9a-f]{7,40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([.-][0-9A-Za-z.]+)?$")

Auth = Literal["hf", "civitai", "none"]
# Where each kind of token comes from; named in errors, never logged.
TOKEN_ENV: dict[str, str] = {"hf": "HF_TOKEN", "civitai": "CIVITAI_TOKEN"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _commit(value: str, what: str) -> str:
    value = value.lower()
    if not _HEX_REF.match(value):
        raise ValueError(f"{what} must be a commit hash (7 to 40 hex digits), got {value!r}; "
                         "branches and tags move, so pin the commit")
    return value


class ComfyUISpec(_Strict):
    """The ComfyUI core: `version` is what comfyui_version.py says, `commit` what git says."""

    version: str
    commit: str
    repo: str = COMFYUI_REPO

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError(f"version must look like v0.3.64, got {v!r}")
        return v if v.startswith("v") else f"v{v}"

    @field_validator("commit")
    @classmethod
    def _commit(cls, v: str) -> str:
        return _commit(v, "commit")

    @property
    def bare_version(self) -> str:
        return self.version.removeprefix("v")


class CustomNodePack(_Strict):
    """A custom node pack cloned into custom_nodes/<name> at `ref`."""

    name: str
    repo: str
    ref: str
    # Extra pip requirements the pack imports but does not list (RES4LYF needs kornia).
    pip: list[str] = Field(default_factory=list)
    requirements: bool = Field(default=True, description="install the pack's requirements.txt")
    install_script: bool = Field(default=False, description="run the pack's install.py after pip")
    # Node classes that must be in /object_info once ComfyUI has loaded the pack.
    provides: list[str] = Field(default_factory=list)
    # Sampler / scheduler names the pack adds to KSampler's lists (checked the same way).
    samplers: list[str] = Field(default_factory=list)
    schedulers: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PACK_NAME.match(v) or v in {".", ".."}:
            raise ValueError(f"name must be a folder name (letters, digits, . _ -), got {v!r}")
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if v.startswith("-"):
            raise ValueError(f"repo must be a git URL or a path, got {v!r}")
        if "://" in v or v.startswith("git@") or v.startswith("/"):
            return v
        raise ValueError(f"repo must be a git URL (https://...) or an absolute path, got {v!r}")

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str) -> str:
        return _commit(v, "ref")

    @field_validator("pip")
    @classmethod
    def _pip(cls, v: list[str]) -> list[str]:
        for req in v:
            if not req or req.startswith("-") or any(c.isspace() for c in req):
                raise ValueError(f"pip entries are requirement specifiers like 'kornia>=0.7', got {req!r}")
        return v

    @field_validator("provides", "samplers", "schedulers")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if any(not n for n in v):
            raise ValueError("names must not be empty")
        return v


class ModelFile(_Strict):
    """One file under models/: where it comes from, where it goes, what it must hash to."""

    url: str
    dest: str
    sha256: str
    size: int = Field(gt=0)
    auth: Auth = "none"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be http(s)://..., got {v!r}")
        return v

    @field_validator("dest")
    @classmethod
    def _dest(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\\" in v:
            raise ValueError(f"dest must be a relative path under models/ without '..', got {v!r}")
        if len(p.parts) < 2:
            raise ValueError(f"dest must be folder/filename (e.g. checkpoints/{v}), got {v!r}")
        if p.name.endswith(".part"):
            raise ValueError("dest must not end in .part (used for downloads in progress)")
        return str(p)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        v = v.lower()
        if not _SHA256.match(v):
            raise ValueError(f"sha256 must be 64 hex digits, got {v!r}")
        return v

    @property
    def folder(self) -> str:
        """The ComfyUI model folder (checkpoints, loras, ...) the file belongs to."""
        return PurePosixPath(self.dest).parts[0]

    @property
    def filename(self) -> str:
        """The name workflows use for it (relative to its folder)."""
        return str(PurePosixPath(*PurePosixPath(self.dest).parts[1:]))

    @property
    def token_env(self) -> str | None:
        return TOKEN_ENV.get(self.auth)


class Benchmark(_Strict):
    workflow: str


class Manifest(_Strict):
    comfyui: ComfyUISpec
    custom_nodes: list[CustomNodePack] = Field(default_factory=list)
    models: list[ModelFile] = Field(default_factory=list)
    benchmark: Benchmark | None = None
    # Where the file was read from; relative paths (benchmark.workflow) resolve against it.
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> "Manifest":
        for what, keys in (("custom_nodes name", [p.name for p in self.custom_nodes]),
                           ("models dest", [m.dest for m in self.models])):
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"duplicate {what}: {', '.join(dupes)}")
        return self

    def pack_for_class(self) -> dict[str, str]:
        """`{node class: pack name}` from every pack's `provides`."""
        return {cls: p.name for p in self.custom_nodes for cls in p.provides}

    def benchmark_path(self) -> Path | None:
        if self.benchmark is None:
            return None
        p = Path(self.benchmark.workflow)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p


def _loc(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """`('models', 1, 'sha256')` -> `models[1] (checkpoints/x.safetensors).sha256`."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            item = node[part] if isinstance(node, list) and part < len(node) else None
            label = item.get("name") or item.get("dest") if isinstance(item, dict) else None
            if label:
                out += f" ({label})"
            node = item
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


_FIELDS: dict[str, list[str]] = {
    "": list(Manifest.model_fields),
    "comfyui": list(ComfyUISpec.model_fields),
    "custom_nodes": list(CustomNodePack.model_fields),
    "models": list(ModelFile.model_fields),
    "benchmark": list(Benchmark.model_fields),
}


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = err["loc"]
    where = _loc(loc, raw) or "manifest"
    if err["type"] == "extra_forbidden":
        section = next((p for p in loc[:-1] if isinstance(p, str)), "")
        choices = [f for f in _FIELDS.get(section, []) if f != "source"]
        hint = difflib.get_close_matches(str(loc[-1]), choices, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(choices)})"
        return f"{where}: unknown key{suffix}"
    if err["type"] == "missing":
        return f"{where}: required"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}"


def parse_manifest(text: str, source: Path | None = None) -> Manifest:
    """Parse and validate manifest text; ManifestInvalid lists every problem found."""
    name = str(source) if source else "manifest"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestInvalid(f"{name}: not valid TOML: {exc}", problems=[str(exc)]) from None
    if "source" in raw:
        raise ManifestInvalid(f"{name}: source: unknown key", problems=["source: unknown key"])
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors()]
        raise ManifestInvalid(f"{name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
                              problems=problems) from None
    return manifest.model_copy(update={"source": source})


def load_manifest(path: Path | str | None = None) -> Manifest:
    path = Path(path) if path else DEFAULT_MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestInvalid(f"{path}: no such manifest file", problems=["file not found"]) from None
    return parse_manifest(text, path.resolve())
