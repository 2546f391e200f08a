"""What a running ComfyUI must offer, checked against its /object_info.

Why: a custom node pack that fails to import does not stop ComfyUI; it logs
`IMPORT FAILED` and serves without those nodes (and without the samplers the pack adds
to KSampler). A worker that trusts its install then accepts requests that can only fail.
Two checks answer that:

- the startup check: every class the manifest's packs `provide`, every class used by
  the benchmark workflow and the templates, and every sampler/scheduler the packs add,
  must be present; otherwise a report names each pack and its missing classes;
- the workflow check (`comfy-worker check-workflow`): one workflow's missing classes,
  missing model files and invalid values, each named, with the pack that would provide
  a missing class when the manifest (or its commented examples) or a known map says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Literal

import aiohttp
from pydantic import BaseModel

from comfy_bridge import logs
from comfy_bridge.comfyui.graph import is_link
from comfy_bridge.errors import ComfyIncomplete, ComfyUnavailable
from comfy_bridge.provision.manifest import Manifest
from comfy_bridge.provision.pack_hints import PackIndex, describe_hint
from comfy_bridge.provision.workflow_files import WorkflowShape, load_workflow_file, template_graphs

log = logs.get(__name__)

# Model inputs -> the models/ folder ComfyUI looks in (for "put it in models/<folder>/").
MODEL_INPUT_FOLDERS: dict[str, str] = {
    "ckpt_name": "checkpoints", "lora_name": "loras", "vae_name": "vae", "control_net_name": "controlnet",
    "unet_name": "diffusion_models", "clip_name": "text_encoders", "clip_name1": "text_encoders",
    "clip_name2": "text_encoders", "clip_name3": "text_encoders", "style_model_name": "style_models",
    "gligen_name": "gligen", "hypernetwork_name": "hypernetworks", "upscale_model": "upscale_models",
    "photomaker_model_name": "photomaker", "config_name": "configs",
}
_MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft|onnx|pkl)$", re.I)

ProblemKind = Literal["missing_class", "missing_model", "invalid_value", "missing_input", "bad_link"]


class Problem(BaseModel):
    kind: ProblemKind
    node_id: str | None = None
    class_type: str | None = None
    input: str | None = None
    message: str
    pack: str | None = None
    repo: str | None = None
    folder: str | None = None


# ---------------------------------------------------------------- /object_info


async def fetch_object_info(comfyui_url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    url = comfyui_url.rstrip("/") + "/object_info"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.get(url) as r:
                if r.status != 200:
                    raise ComfyUnavailable(f"GET {url} answered {r.status}")
                data = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ComfyUnavailable(f"cannot reach ComfyUI at {comfyui_url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ComfyUnavailable(f"GET {url} did not answer a JSON object")
    return data


def _input_specs(info: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    inputs = info.get("input", {}) or {}
    required = dict(inputs.get("required", {}) or {})
    optional = dict(inputs.get("optional", {}) or {})
    return {**optional, **required}, set(required)


def combo_options(spec: Any) -> list[Any] | None:
    """The allowed values of a combo input (old list form or the newer "COMBO" + options form)."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        opts = spec[1].get("options")
        return opts if isinstance(opts, list) else None
    return None


def _options_of(object_info: dict[str, Any], cls: str, name: str) -> list[Any]:
    spec = _input_specs(object_info.get(cls, {}))[0].get(name)
    return combo_options(spec) or []


def available_samplers(object_info: dict[str, Any]) -> tuple[set[str], set[str]]:
    return (set(map(str, _options_of(object_info, "KSampler", "sampler_name"))),
            set(map(str, _options_of(object_info, "KSampler", "scheduler"))))


def _is_model_input(name: str, options: list[Any]) -> bool:
    if name in MODEL_INPUT_FOLDERS:
        return True
    return name.endswith("_name") and any(isinstance(o, str) and _MODEL_EXT.search(o) for o in options)


def check_graph(graph: dict[str, dict[str, Any]], object_info: dict[str, Any], packs: PackIndex | None = None,
                manifest: Manifest | None = None) -> list[Problem]:
    """Every problem ComfyUI's own validation would raise for this graph, named, plus the fix."""
    packs = packs or PackIndex(manifest)
    declared = {m.filename: m for m in (manifest.models if manifest else [])}
    problems: list[Problem] = []
    for node_id, node in sorted(graph.items(), key=lambda kv: kv[0]):
        cls = str(node.get("class_type"))
        if cls not in object_info:
            hint = packs.for_class(cls)
            problems.append(Problem(kind="missing_class", node_id=node_id, class_type=cls,
                                    pack=hint.name if hint else None, repo=hint.repo if hint else None,
                                    message=f"node {node_id}: class {cls} is not installed; {describe_hint(hint)}"))
            continue
        specs, required = _input_specs(object_info[cls])
        given = node.get("inputs", {}) if isinstance(node.get("inputs"), dict) else {}
        for name in sorted(required - set(given)):
            problems.append(Problem(kind="missing_input", node_id=node_id, class_type=cls, input=name,
                                    message=f"node {node_id} ({cls}): required input {name} is missing"))
        for name, value in given.items():
            spec = specs.get(name)
            if spec is None:
                continue  # ComfyUI ignores inputs a class does not declare
            problems += _check_value(graph, object_info, node_id, cls, name, value, spec, packs, declared)
    return problems


def _check_value(graph: dict[str, Any], object_info: dict[str, Any], node_id: str, cls: str, name: str, value: Any,
                 spec: Any, packs: PackIndex, declared: dict[str, Any]) -> list[Problem]:
    where = f"node {node_id} ({cls}) input {name}"

    def bad(kind: ProblemKind, msg: str, **kw: Any) -> list[Problem]:
        return [Problem(kind=kind, node_id=node_id, class_type=cls, input=name, message=f"{where}: {msg}", **kw)]

    if is_link(value):
        src_id = str(value[0])
        src = graph.get(src_id)
        if src is None:
            return bad("bad_link", f"links to node {src_id}, which is not in the workflow")
        src_cls = str(src.get("class_type"))
        outputs = object_info.get(src_cls, {}).get("output")
        expected = spec[0] if isinstance(spec, list) and spec and isinstance(spec[0], str) else None
        if isinstance(outputs, list) and src_cls in object_info:
            if value[1] >= len(outputs):
                return bad("bad_link", f"links to output {value[1]} of node {src_id} ({src_cls}), which has "
                                       f"{len(outputs)}")
            got = outputs[value[1]]
            if expected and expected not in ("*", "COMBO") and isinstance(got, str) and got != "*" \
                    and expected not in got.split(",") and got not in expected.split(","):
                return bad("invalid_value", f"expects {expected} but node {src_id} ({src_cls}) output "
                                            f"{value[1]} is {got}")
        return []

    options = combo_options(spec)
    if options is not None:
        if value in options:
            return []
        if _is_model_input(name, options):
            folder = MODEL_INPUT_FOLDERS.get(name)
            m = declared.get(str(value))
            fix = (f"the manifest declares it ({m.dest}): run comfy-worker provision" if m else
                   f"add it to the manifest's [[models]] (dest = \"{folder or '<folder>'}/{value}\")")
            return bad("missing_model", f"model file {value!r} not found"
                                        f"{f' in models/{folder}' if folder else ''}; {fix}", folder=folder)
        hint = packs.samplers.get(str(value))
        extra = f"; pack {hint.name} adds it (did it fail to import?)" if hint else ""
        shown = ", ".join(map(str, options[:8])) + (", ..." if len(options) > 8 else "")
        return bad("invalid_value", f"{value!r} is not one of the allowed values ({shown}){extra}",
                   pack=hint.name if hint else None)

    kind = spec[0] if isinstance(spec, list) and spec else None
    opts = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return bad("invalid_value", f"{value!r} is not a number")
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo:
            return bad("invalid_value", f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            return bad("invalid_value", f"{value} is above the maximum {hi}")
        return []
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return bad("invalid_value", f"{value!r} is not true or false")
    if kind == "STRING" and not isinstance(value, str):
        return bad("invalid_value", f"{value!r} is not a string")
    if isinstance(kind, str) and kind.isupper() and kind not in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "*") \
            and not isinstance(value, (str, int, float, bool)) and value is not None:
        return bad("invalid_value", f"expects a link to a {kind} output")
    return []


def check_classes(class_types: Iterable[str], object_info: dict[str, Any], packs: PackIndex) -> list[Problem]:
    """Class-only check (for UI-format workflows, whose values cannot be read reliably)."""
    problems = []
    for cls in sorted(set(class_types)):
        if cls not in object_info:
            hint = packs.for_class(cls)
            problems.append(Problem(kind="missing_class", class_type=cls, pack=hint.name if hint else None,
                                    repo=hint.repo if hint else None,
                                    message=f"class {cls} is not installed; {describe_hint(hint)}"))
    return problems


# ---------------------------------------------------------------- startup check


class MissingPack(BaseModel):
    pack: str | None  # None: no manifest entry or known pack names it
    repo: str | None = None
    in_manifest: bool = False
    classes: list[str] = []
    samplers: list[str] = []
    needed_by: list[str] = []


class VerifyReport(BaseModel):
    ok: bool
    missing: list[MissingPack] = []
    problems: list[Problem] = []  # the benchmark workflow's own problems (missing models, values)
    checked_classes: int = 0

    @property
    def message(self) -> str:
        if self.ok:
            return f"ComfyUI offers all {self.checked_classes} node classes the worker needs"
        parts = []
        for m in self.missing:
            names = ", ".join(m.classes + [f"sampler/scheduler {s}" for s in m.samplers])
            who = f"pack {m.pack}" if m.pack else "unknown pack"
            why = " (in the manifest: it failed to import, see IMPORT FAILED in ComfyUI's log)" if m.in_manifest \
                else " (not in the manifest: add it)" if m.pack else ""
            needed = f" needed by {', '.join(m.needed_by)}" if m.needed_by else ""
            parts.append(f"{who}{why}: missing {names}{needed}")
        parts += [p.message for p in self.problems]
        return "ComfyUI is incomplete: " + "; ".join(parts)

    def error(self) -> ComfyIncomplete:
        return ComfyIncomplete(self.message, missing=[m.model_dump() for m in self.missing],
                               problems=[p.model_dump() for p in self.problems] or None)


def verify_object_info(object_info: dict[str, Any], manifest: Manifest | None = None,
                       workflows: dict[str, WorkflowShape] | None = None, *,
                       benchmark: tuple[str, WorkflowShape] | None = None) -> VerifyReport:
    """Compare what the worker needs with what ComfyUI offers; name each missing pack and class."""
    packs = PackIndex(manifest)
    needed: dict[str, set[str]] = {}  # class -> who needs it
    manifest_packs = {p.name: p for p in (manifest.custom_nodes if manifest else [])}
    for p in manifest_packs.values():
        for cls in p.provides:
            needed.setdefault(cls, set()).add(f"manifest:{p.name}")
    sources = dict(workflows or {})
    if benchmark is not None:
        sources[f"benchmark {benchmark[0]}"] = benchmark[1]
    for name, wf in sources.items():
        for cls in wf.class_types:
            needed.setdefault(cls, set()).add(name if name.startswith("benchmark") else f"template {name}")

    by_pack: dict[str | None, MissingPack] = {}
    for cls in sorted(needed):
        if cls in object_info:
            continue
        hint = packs.for_class(cls)
        key = hint.name if hint else None
        entry = by_pack.setdefault(key, MissingPack(pack=key, repo=hint.repo if hint else None,
                                                    in_manifest=key in manifest_packs))
        entry.classes.append(cls)
        entry.needed_by = sorted(set(entry.needed_by) | {n for n in needed[cls] if not n.startswith("manifest:")})

    samplers, schedulers = available_samplers(object_info)
    if "KSampler" in object_info:
        for p in manifest_packs.values():
            lost = [s for s in p.samplers if s not in samplers] + [s for s in p.schedulers if s not in schedulers]
            if lost:
                entry = by_pack.setdefault(p.name, MissingPack(pack=p.name, repo=p.repo, in_manifest=True))
                entry.samplers += lost

    problems: list[Problem] = []
    if benchmark is not None and benchmark[1].api is not None:
        problems = [p for p in check_graph(benchmark[1].api, object_info, packs, manifest)
                    if p.kind != "missing_class"]  # missing classes are already in `missing`
    missing = sorted(by_pack.values(), key=lambda m: (m.pack is None, m.pack or ""))
    return VerifyReport(ok=not missing and not problems, missing=missing, problems=problems,
                        checked_classes=len(needed))


async def startup_check(comfyui_url: str, manifest: Manifest | None = None, *, workflows_dir: Path | None = None,
                        object_info: dict[str, Any] | None = None) -> VerifyReport:
    """The check a worker runs once ComfyUI answers: log the result and return it.

    The caller (the worker's lifecycle) turns a failed report into the autoscaler's
    error_msg (`report.message`) and refuses requests (`raise report.error()`).
    """
    info = object_info if object_info is not None else await fetch_object_info(comfyui_url)
    bench: tuple[str, WorkflowShape] | None = None
    if manifest is not None and (path := manifest.benchmark_path()) is not None:
        try:
            bench = (path.name, load_workflow_file(path))
        except (OSError, ValueError) as exc:
            log.warning("benchmark workflow %s unreadable: %s", path, exc)
    report = verify_object_info(info, manifest, template_graphs(workflows_dir), benchmark=bench)
    if report.ok:
        log.info("%s", report.message)
    else:
        log.error("%s", report.message, extra={"fields": {"missing": [m.model_dump() for m in report.missing]}})
    return report


def raise_if_incomplete(object_info: dict[str, Any], manifest_path: Path | str | None = None,
                        workflows_dir: Path | None = None) -> VerifyReport:
    """For a readiness check that already holds /object_info: raise ComfyIncomplete naming
    each missing pack and class (its message is what the autoscaler's error_msg should say).

    The manifest is COMFY_WORKER_MANIFEST, else the repository's; the benchmark is not
    re-checked here (the caller checks its own benchmark graph)."""
    import os

    from comfy_bridge.provision.manifest import load_manifest

    manifest = load_manifest(manifest_path or os.environ.get("COMFY_WORKER_MANIFEST") or None)
    report = verify_object_info(object_info, manifest, template_graphs(workflows_dir))
    if not report.ok:
        log.error("%s", report.message, extra={"fields": {"missing": [m.model_dump() for m in report.missing]}})
        raise report.error()
    return report
