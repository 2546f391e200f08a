"""What the bridge checks and changes in an API-format graph before ComfyUI sees it.

Checks come first so a caller learns what to fix in one round trip (naming the node),
instead of reading ComfyUI's terser 400. Rewrites make every submission write its
outputs into a fresh per-request folder: identical graphs would otherwise be served
from ComfyUI's cache, reporting the previous run's (possibly deleted) files.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Iterable

from comfy_bridge.errors import (
    InvalidWorkflow,
    MissingModels,
    MissingNodeClasses,
    WorkflowRejected,
)

OUTPUT_ROOT = "cvw"
# Extra input given to a save node whose filename_prefix is a link (see prepare()).
FRESH_INPUT = "cvw_fresh"

# ComfyUI input name -> models/ folder it lists files from.
MODEL_FOLDERS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "unet_name": "diffusion_models",
    "control_net_name": "controlnet",
    "upscale_model_name": "upscale_models",
    "style_model_name": "style_models",
    "clip_vision_name": "clip_vision",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "config_name": "configs",
}
# `*_name` inputs that pick from a list of names, not files: a miss there is not a model.
_NOT_MODELS = {"sampler_name", "scheduler_name", "scheduler", "noise_name", "preset_name"}
_MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|onnx|sft|pkl|yaml|engine)$", re.I)
_UNKNOWN_CLASS = re.compile(r"Cannot execute because node (.+?) does not exist")


def validate_structure(graph: Any) -> dict[str, dict[str, Any]]:
    """Raise InvalidWorkflow naming the first malformed node or dangling link."""
    if not isinstance(graph, dict) or not graph:
        raise InvalidWorkflow(
            "workflow_json must be a non-empty object of nodes "
            '{"<node_id>": {"class_type": ..., "inputs": {...}}} (API format)'
        )
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            raise InvalidWorkflow(
                f"node {node_id!r} must be an object with class_type and inputs", node_id=node_id
            )
        cls = node.get("class_type")
        if not isinstance(cls, str) or not cls:
            raise InvalidWorkflow(
                f"node {node_id!r} has no class_type: every node needs a string class_type "
                "(is this the UI format? export with 'Save (API Format)')",
                node_id=node_id,
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise InvalidWorkflow(
                f"node {node_id!r} ({cls}): inputs must be an object", node_id=node_id
            )
        for name, value in inputs.items():
            if is_link(value) and str(value[0]) not in graph:
                raise InvalidWorkflow(
                    f"node {node_id!r} ({cls}): input {name!r} links to node {value[0]!r}, "
                    "which is not in the workflow",
                    node_id=node_id,
                    input_name=name,
                )
    _reject_cycles(graph)
    return graph


def _reject_cycles(graph: dict[str, dict[str, Any]]) -> None:
    """A graph whose links loop back can never run: name the loop instead of letting
    ComfyUI fail it at execution time (a 500 for what is the caller's mistake)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        path: list[str] = [start]
        stack = [iter(_sources(graph, start))]
        state[start] = 1
        while stack:
            src = next(stack[-1], None)
            if src is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(src) == 1:
                loop = path[path.index(src):] + [src]
                raise InvalidWorkflow(
                    f"the workflow's links form a cycle ({' -> '.join(loop)}): a node cannot "
                    "depend on its own output; remove the link that closes the loop",
                    node_id=src,
                    cycle=loop,
                )
            elif src not in state:
                state[src] = 1
                path.append(src)
                stack.append(iter(_sources(graph, src)))


def _sources(graph: dict[str, dict[str, Any]], node_id: str) -> list[str]:
    inputs = graph[node_id].get("inputs") or {}
    return [str(v[0]) for v in inputs.values() if is_link(v) and str(v[0]) in graph]


# ComfyUI's own data types: values only a node's output carries, never a widget's constant.
# Any other type (INT, COMBO, and every custom type a pack or a core node declares, such as
# WebcamCapture's WEBCAM) may take a constant: ComfyUI's own validation decides those.
SOCKET_TYPES = frozenset({
    "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CONTROL_NET",
    "CLIP_VISION", "CLIP_VISION_OUTPUT", "STYLE_MODEL", "GLIGEN", "UPSCALE_MODEL", "SAMPLER",
    "SIGMAS", "NOISE", "GUIDER", "AUDIO", "VIDEO", "PHOTOMAKER", "HOOKS", "LATENT_OPERATION",
    "AUDIO_ENCODER", "AUDIO_ENCODER_OUTPUT", "MODEL_PATCH",
})


def check_socket_inputs(graph: dict[str, dict[str, Any]], node_info: Callable[[str], Any]) -> None:
    """Raise InvalidWorkflow for a constant given where a node takes one of ComfyUI's own
    data types (SOCKET_TYPES), which only another node's output can carry.

    ComfyUI's validation lets `"samples": null` into a LATENT input; the node then raises
    mid-execution (a 500 after the GPU was spent). Inputs of any other type are left to
    ComfyUI, which accepts constants for custom widget types. `node_info(class_type)` is the
    class's /object_info entry, or None when unknown (then nothing is checked).
    """
    for node_id, node in graph.items():
        info = node_info(node["class_type"])
        declared = info.get("input") if isinstance(info, dict) else None
        if not isinstance(declared, dict):
            continue
        for section in ("required", "optional"):
            spec = declared.get(section)
            if not isinstance(spec, dict):
                continue
            for name, value in node.get("inputs", {}).items():
                kind = spec.get(name)
                kind = kind[0] if isinstance(kind, (list, tuple)) and kind else kind
                if not isinstance(kind, str) or kind not in SOCKET_TYPES or is_link(value):
                    continue
                raise InvalidWorkflow(
                    f"node {node_id!r} ({node['class_type']}): input {name!r} takes a {kind} from "
                    f"another node's output; give a link [\"<node_id>\", <output_index>], "
                    f"not {type(value).__name__} {str(value)[:40]!r}",
                    node_id=node_id,
                    input_name=name,
                )


def is_link(value: Any) -> bool:
    """A ComfyUI API-format link: `[source_node_id, output_index]`."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def class_types(graph: dict[str, dict[str, Any]]) -> set[str]:
    return {node["class_type"] for node in graph.values()}


def missing_classes_error(missing: Iterable[str], graph: dict[str, dict[str, Any]]) -> MissingNodeClasses:
    names = sorted(set(missing))
    nodes = {nid: n["class_type"] for nid, n in graph.items() if n.get("class_type") in names}
    return MissingNodeClasses(
        f"node classes not installed in this ComfyUI: {', '.join(names)} "
        "(add the custom node pack that provides them, or fix the class_type)",
        classes=names,
        nodes=nodes,
    )


def prepare(
    graph: dict[str, dict[str, Any]],
    output_dir: str,
    staged: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """A copy of `graph` whose outputs land in `output_dir` and whose inputs name staged files.

    Every string `filename_prefix` becomes `{output_dir}/{basename of the original}`; every
    string input equal to a staged image name becomes its staged path. A node whose
    `filename_prefix` comes from a link (its value is only known inside ComfyUI) gets an
    extra input FRESH_INPUT = `output_dir` instead: ComfyUI folds every input of a node into
    its cache key but passes a node only the inputs it declares, so the node runs again and
    writes fresh files (the cache trap: see this module's docstring).
    """
    out = copy.deepcopy(graph)
    staged = staged or {}
    for node in out.values():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        if is_link(inputs.get("filename_prefix")):
            inputs[FRESH_INPUT] = output_dir
        for name, value in inputs.items():
            if not isinstance(value, str):
                continue
            if name == "filename_prefix":
                inputs[name] = f"{output_dir}/{_basename(value)}"
            elif value in staged:
                inputs[name] = staged[value]
    return out


def output_dir(request_id: str, prompt_id: str) -> str:
    """Per-submission folder under ComfyUI's output/: unique even for a repeated request_id."""
    return f"{OUTPUT_ROOT}/{request_id}-{prompt_id.replace('-', '')[:12]}"


def _basename(prefix: str) -> str:
    base = re.split(r"[/\\]", prefix)[-1].strip()
    return base if base not in ("", ".", "..") else "ComfyUI"


def rejection(body: Any) -> WorkflowRejected:
    """Turn ComfyUI's 400 body from POST /prompt into the error the caller should see."""
    body = body if isinstance(body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    comfy_message = str(error.get("message") or body.get("error") or "workflow rejected")

    unknown = _UNKNOWN_CLASS.search(comfy_message)
    if unknown:
        cls = unknown.group(1)
        return MissingNodeClasses(
            f"node classes not installed in this ComfyUI: {cls} "
            "(add the custom node pack that provides it, or fix the class_type)",
            classes=[cls],
            comfy_error=error,
            node_errors=node_errors,
        )

    models = _missing_models(node_errors)
    if models:
        names = ", ".join(
            f"{m['file']} ({m['input']} of node {m['node_id']} {m['class_type']}, "
            f"expected in models/{m['folder']}/)"
            for m in models
        )
        return MissingModels(
            f"model files not found: {names}; add them to models_manifest.toml or fix the names",
            models=models,
            node_errors=node_errors,
        )

    problems = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        cls = entry.get("class_type", "?")
        for err in entry.get("errors") or []:
            if isinstance(err, dict):
                detail = err.get("details") or ""
                problems.append(f"node {node_id} ({cls}): {err.get('message')}" + (f" [{detail}]" if detail else ""))
    message = f"ComfyUI rejected the workflow: {comfy_message}"
    if problems:
        message += "; " + "; ".join(problems)
    elif error.get("details"):
        message += f" ({error['details']})"
    return WorkflowRejected(message, comfy_error=error, node_errors=node_errors)


def _missing_models(node_errors: dict[str, Any]) -> list[dict[str, Any]]:
    models = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        for err in entry.get("errors") or []:
            if not isinstance(err, dict) or err.get("type") != "value_not_in_list":
                continue
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            name = str(extra.get("input_name") or err.get("details", "").split(":")[0])
            value = extra.get("received_value")
            if not _is_model_input(name, value):
                continue
            models.append(
                {
                    "node_id": str(node_id),
                    "class_type": entry.get("class_type"),
                    "input": name,
                    "file": value,
                    "folder": MODEL_FOLDERS.get(name, "unknown"),
                }
            )
    return models


def _is_model_input(name: str, value: Any) -> bool:
    if name in MODEL_FOLDERS:
        return True
    if not name.endswith("_name") or name in _NOT_MODELS:
        return False
    return isinstance(value, str) and bool(_MODEL_EXT.search(value))
