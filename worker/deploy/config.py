"""deploy.toml: the reviewed file that is the whole Vast deployment, and its resolution.

`load()` reads the file, lays the `[env.NAME]` overlay chosen with `--env` over the base
tables, replaces `${VAR}` with the process environment, and validates the result with
the pydantic models below (unknown keys are errors, so a typo is named, not ignored).

A value that came from `${VAR}` is never printed: `Desired.display(path, value)` shows
`<from $VAR>` for it, and `Desired.redact(text)` removes every such value from any text
(plan output, state JSON, error messages). An unset variable is an error naming it and
the field that uses it, raised before anything talks to Vast.

What Vast receives is built here too (`template_fields`, `endpoint_fields`,
`workergroup_fields`): always the full state, because the SDK sends `null` for any
field left out (worker/deploy/vast_api.py).
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfy_bridge.errors import DeployConfigInvalid as DeployConfigError

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploySection(_Strict):
    # The identity of everything this file manages: the template is named after it and,
    # unless [endpoint] name says otherwise, so is the endpoint.
    name: str = Field(pattern=NAME)


class TemplateSection(_Strict):
    image: str = Field(min_length=1)
    tag: str = Field(default="latest", min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[int] = Field(default_factory=lambda: [3000])
    disk_gb: float = Field(default=40, gt=0)
    # args: the image's ENTRYPOINT runs (start_server.sh); ssh/jupyter replace it, so
    # onstart must start the worker then.
    launch_mode: Literal["args", "ssh", "jupyter"] = "args"
    onstart: str = ""


class EndpointSection(_Strict):
    name: str | None = Field(default=None, pattern=NAME)
    state: Literal["active", "suspended", "stopped"] = "active"
    min_load: float = Field(default=0.0, ge=0)
    min_cold_load: float = Field(default=0.0, ge=0)
    target_util: float = Field(default=0.9, gt=0, le=1)
    cold_mult: float = Field(default=2.5, ge=1)
    cold_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=4, ge=1)
    max_queue_time: float = Field(default=30.0, gt=0)
    target_queue_time: float = Field(default=10.0, gt=0)
    inactivity_timeout: int = Field(default=600, ge=0)


class WorkergroupSection(_Strict):
    search_params: str = Field(min_length=1)
    gpu_ram: float = Field(gt=0)
    launch_args: str = ""


class DeployFile(_Strict):
    deploy: DeploySection
    template: TemplateSection
    endpoint: EndpointSection = Field(default_factory=EndpointSection)
    workergroup: WorkergroupSection

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.name or self.deploy.name


ENDPOINT_FIELDS = ("min_load", "min_cold_load", "target_util", "cold_mult", "cold_workers", "max_workers",
                   "max_queue_time", "target_queue_time", "inactivity_timeout")


class Desired(BaseModel):
    """The resolved file, plus what must never be printed."""

    config: DeployFile
    env_name: str | None = None
    file: str
    # dotted path -> "<from $VAR>" rendering, for every value that used ${VAR}
    hidden: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list, repr=False)

    def display(self, path: str, value: Any) -> Any:
        return self.hidden.get(path, value)

    def redact(self, text: str) -> str:
        # A backstop behind display(): values under 4 characters (a tag "v1") would blank
        # out unrelated text and are not plausible secrets.
        for secret in sorted((s for s in self.secrets if len(s) >= 4), key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return text

    # --- what Vast receives --------------------------------------------------------------

    def docker_options(self) -> str:
        t = self.config.template
        parts = [f"-p {p}:{p}" for p in t.ports]
        parts += [f"-e {k}={shlex.quote(v)}" for k, v in sorted(t.env.items())]
        return " ".join(parts)

    def template_fields(self) -> dict[str, Any]:
        t = self.config.template
        return {
            "name": self.config.deploy.name, "image": t.image, "image_tag": t.tag,
            "env": self.docker_options(), "onstart_cmd": t.onstart, "disk_space": t.disk_gb,
            "runtype": t.launch_mode, "use_ssh": t.launch_mode != "args",
            "use_jupyter_lab": False, "jup_direct": False, "ssh_direct": False,
            "private": True, "readme_visible": False, "extra_filters": {},
        }

    def endpoint_fields(self) -> dict[str, Any]:
        e = self.config.endpoint
        return {"endpoint_name": self.config.endpoint_name, "endpoint_state": e.state,
                **{k: getattr(e, k) for k in ENDPOINT_FIELDS}}

    def workergroup_fields(self, *, template_hash: str, template_id: int | None, endpoint_id: int) -> dict[str, Any]:
        w = self.config.workergroup
        return {
            "template_hash": template_hash, "template_id": template_id, "search_params": w.search_params,
            "launch_args": w.launch_args, "gpu_ram": w.gpu_ram, "endpoint_name": self.config.endpoint_name,
            "endpoint_id": endpoint_id,
            # without it the SDK appends "verified=True rentable=True rented=False" to search_params
            "no_default": True,
        }


def parse_docker_options(text: str | None) -> tuple[list[int], dict[str, str]]:
    """(ports, env) of a template's docker options string, as docker_options() writes it."""
    ports: list[int] = []
    env: dict[str, str] = {}
    try:
        words = shlex.split(text or "")
    except ValueError:
        return ports, {"<unparsed>": text or ""}
    for flag, value in zip(words, words[1:]):
        container_port = value.split(":")[-1].split("/")[0]
        if flag == "-p" and container_port.isdigit():
            ports.append(int(container_port))
        elif flag == "-e" and "=" in value:
            k, v = value.split("=", 1)
            env[k] = v
    return ports, env


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`: tables merge key by key ([template.env] too), values replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _resolve(node: Any, path: str, environ: Mapping[str, str], desired_hidden: dict[str, str],
             secrets: list[str], missing: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, f"{path}.{k}" if path else k, environ, desired_hidden, secrets, missing)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, f"{path}[{i}]", environ, desired_hidden, secrets, missing)
                for i, v in enumerate(node)]
    if not isinstance(node, str) or not VAR.search(node):
        return node

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in environ:
            missing.append(f"${{{name}}} (used by {path})")
            return f"<unset ${name}>"
        if environ[name]:
            secrets.append(environ[name])
        return environ[name]

    desired_hidden[path] = VAR.sub(lambda m: f"<from ${m.group(1)}>", node)
    return VAR.sub(sub, node)


def _describe(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against deploy.toml's comments)"
        elif err["type"] == "missing":
            msg = "required, missing"
        lines.append(f"  {loc}: {msg}")
    return f"{where} is invalid:\n" + "\n".join(lines)


def load(path: Path | str, *, env_name: str | None = None, image_tag: str | None = None,
         environ: Mapping[str, str] | None = None, strict: bool = True) -> Desired:
    """The resolved deployment. strict=False reads an unset ${VAR} as "<unset $VAR>" (for
    the endpoint settings of a local run, where the image tag or tokens do not matter)."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    where = f"{path}" + (f" [env.{env_name}]" if env_name else "")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DeployConfigError(
            f"{path}: no such file (give --file, or copy deploy.toml from the repository root)") from None
    except tomllib.TOMLDecodeError as e:
        raise DeployConfigError(f"{path}: not valid TOML: {e}") from None
    overlays = data.pop("env", {}) or {}
    if not isinstance(overlays, dict) or not all(isinstance(v, dict) for v in overlays.values()):
        raise DeployConfigError(f"{path}: [env.NAME] tables must be tables of overrides")
    if env_name is not None:
        if env_name not in overlays:
            known = ", ".join(sorted(overlays)) or "none"
            raise DeployConfigError(f"{path}: no [env.{env_name}] overlay (environments in this file: {known})")
        data = _merge(data, overlays[env_name])
    if image_tag:
        data.setdefault("template", {})["tag"] = image_tag
    hidden: dict[str, str] = {}
    secrets: list[str] = []
    missing: list[str] = []
    data = _resolve(data, "", environ, hidden, secrets, missing)
    if missing and strict:
        raise DeployConfigError(
            f"{where}: " + "; ".join(missing) + " not set in the environment. Export each (in CI: a secret "
            "or variable of the job); nothing was read from or written to Vast.")
    try:
        config = DeployFile.model_validate(data)
    except ValidationError as e:
        raise DeployConfigError(_describe(e, where)) from None
    return Desired(config=config, env_name=env_name, file=str(path), hidden=hidden, secrets=secrets)


def local_endpoint_settings(path: Path | str, env_name: str | None = None) -> tuple[str, dict[str, Any]]:
    """(endpoint name, WorkerSettings overrides) of deploy.toml's endpoint, for a local run
    (`comfy-worker serve --local --deploy-file`): the worker then refuses (429) at the
    same max_queue_time as on Vast."""
    desired = load(path, env_name=env_name, strict=False)
    return desired.config.endpoint_name, {"max_queue_time_s": desired.config.endpoint.max_queue_time}
