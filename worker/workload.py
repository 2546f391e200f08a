"""Workload units: what one request costs the GPU, estimated from its graph before it runs.

Vast's autoscaler sizes the fleet from the units each worker reports: `new_load` and
`cur_load` are sums of per-request units, `max_perf` is units per second measured by the
benchmark, and the framework refuses a request (429) once queued units / max_perf passes
max_queue_time. A flat figure per request (Vast's ComfyUI template charges 100 whatever
the graph) makes a 4-step 512x512 preview cost as much as a 40-step 2048x2048 render, so
the queue-time estimate and the scaling decisions are wrong by the ratio between them.
Units here scale with the work the sampler actually does:

    units = (REQUEST_UNITS
          + sum over sampler nodes of
              steps_run x megapixels x frames x batch x step_cost x cfg_factor x family)
          x shape_correction

- steps_run: KSampler `steps`; KSamplerAdvanced `min(end_at_step, steps) - start_at_step`;
  SamplerCustom / SamplerCustomAdvanced: `steps` of the scheduler node feeding `sigmas`;
  RES4LYF ClownsharKSampler_Beta / SharkSampler_Beta / *Chainsampler_Beta: `steps_to_run`
  when > 0, else `steps` (a chain sampler without either inherits its upstream sampler's).
- megapixels: latent width x height / 1024^2, read from the node that makes the latent
  (EmptyLatentImage, EmptySD3LatentImage, video latents...), following upscales
  (LatentUpscale, LatentUpscaleBy, ImageScale...) and earlier samplers; a latent of
  unknown size (e.g. VAEEncode of a loaded image) counts as 1024x1024.
- frames: 1 for images; a video latent's `length` frames at 4x temporal compression,
  i.e. (length - 1) // 4 + 1.
- batch: the latent's `batch_size` (times RepeatLatentBatch `amount`).
- step_cost: model_calls_per_step, how many times the sampler runs the model per step
  (1 for euler, dpmpp_2m, ddim, lcm, uni_pc, res_2m...; 2 for heun, dpm_2, dpmpp_sde,
  dpmpp_2s_ancestral, res_2s...; 3 for res_3s; N for any RES4LYF `*_Ns` method), times
  RES4LYF_STAGE_COST (1.25) for RES4LYF's N-stage methods, whose own per-stage math adds
  to the model calls: a res_2s SDXL 1024x1024 image measured 2.6x an euler one on an H100
  (FACTS.md), 2.34-2.39x on an H200 and 1.98x (p50; 2.49x by the fastest runs) on another
  H100 (bench/gpu_check.sh); 2 x 1.25 gives 2.43x, within what was seen.
- cfg_factor: 1 when cfg != 1 (ComfyUI runs the positive and the negative pass), 0.5
  when cfg == 1 (ComfyUI skips the negative pass), 1.5 for DualCFGGuider.
- family: the cost of the model the sampler runs, per latent-megapixel step, relative to
  SDXL (worker/model_family.py: read from the checkpoint the graph loads; SD1.5 1.65).
- shape_correction: learned per graph shape from completed requests' measured execution
  time (worker/shape_correction.py; 1 until a shape has been seen, bounded).
- REQUEST_UNITS (default 1): the fixed cost of any request (queueing, loading inputs,
  decoding, encoding and delivering outputs).

A graph it cannot read at all (not an object of nodes, a template that cannot be
expanded) counts DEFAULT_UNITS (default 20, about one SDXL 1024x1024 20-step image).

Examples: SDXL 1024x1024, 20 steps, euler, cfg 7: 1 + 20 = 21 units; the same with res_2s:
1 + 20 x 2 x 1.25 = 51; SD1.5 512x512, 20 steps, euler: 1 + 5 x 1.65 = 9.25; batch 4 of it:
1 + 20 x 1.65 = 34.

The benchmark counts the same units, so max_perf (units per second on this GPU)
predicts the time of any other request as units / max_perf.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from comfy_bridge import logs
from comfy_bridge.comfyui.graph import is_link
from worker import model_family
from worker.model_family import ModelFamilies
from worker.shape_correction import ShapeCorrections

log = logs.get(__name__)

REQUEST_UNITS = 1.0
DEFAULT_UNITS = 20.0
_MP = 1024.0 * 1024.0
_DEFAULT_SIDE = 1024
_DEFAULT_STEPS = 20
_MAX_DEPTH = 48

# Sampler names whose step calls the model more than once (ComfyUI core and RES4LYF).
_CALLS_PER_STEP: dict[str, float] = {
    "heun": 2,
    "heunpp2": 3,
    "dpm_2": 2,
    "dpm_2_ancestral": 2,
    "dpmpp_sde": 2,
    "dpmpp_sde_gpu": 2,
    "dpmpp_2s_ancestral": 2,
    "dpmpp_2s_ancestral_cfg_pp": 2,
    "exp_heun_2_x0": 2,
    "exp_heun_2_x0_sde": 2,
    "seeds_2": 2,
    "seeds_3": 3,
    "dpm_adaptive": 3,  # adaptive step count: a guess, on the safe side
}
# RES4LYF names a k-stage method "<family>_<k>s[...]" ("res_2s", "res_3s_alt",
# "pec423_2h2s", "gauss-legendre_4s"); multistep ones ("res_2m") call the model once.
_STAGES = re.compile(r"_(?:\d+h)?(\d+)s(?:_|$)")

# Sampler-provider nodes: class -> sampler name they stand for.
_SAMPLER_CLASSES: dict[str, str] = {
    "SamplerEulerAncestral": "euler_ancestral",
    "SamplerEulerAncestralCFGPP": "euler_ancestral",
    "SamplerDPMPP_2M_SDE": "dpmpp_2m_sde",
    "SamplerDPMPP_3M_SDE": "dpmpp_3m_sde",
    "SamplerDPMPP_SDE": "dpmpp_sde",
    "SamplerDPMPP_2S_Ancestral": "dpmpp_2s_ancestral",
    "SamplerDPMAdaptative": "dpm_adaptive",
    "SamplerLMS": "lms",
    "SamplerLCMUpscale": "lcm",
    "SamplerER_SDE": "er_sde",
    "SamplerSASolver": "sa_solver",
}
_LATENT_INPUTS = ("latent_image", "samples", "latent", "latents", "pixels", "image", "images")


RES4LYF_STAGE_COST = 1.25


def step_cost(sampler_name: Any) -> float:
    """Cost of one sampling step in model-call units (see the module docstring)."""
    calls = model_calls_per_step(sampler_name)
    if isinstance(sampler_name, str) and _is_res4lyf_multistage(sampler_name):
        return calls * RES4LYF_STAGE_COST
    return calls


def _is_res4lyf_multistage(sampler_name: str) -> bool:
    name = sampler_name.rsplit("/", 1)[-1].strip().lower()
    m = _STAGES.search(name)
    return name not in _CALLS_PER_STEP and m is not None and int(m.group(1)) > 1


def model_calls_per_step(sampler_name: Any) -> float:
    """Model evaluations per sampling step for a ComfyUI or RES4LYF sampler name."""
    if not isinstance(sampler_name, str) or not sampler_name:
        return 1.0
    name = sampler_name.rsplit("/", 1)[-1].strip().lower()
    if name in _CALLS_PER_STEP:
        return float(_CALLS_PER_STEP[name])
    m = _STAGES.search(name)
    if m:
        return float(max(1, int(m.group(1))))
    return 1.0


@dataclass(frozen=True)
class _Latent:
    width: float
    height: float
    frames: float = 1.0
    batch: float = 1.0

    @property
    def megapixels(self) -> float:
        return self.width * self.height / _MP


_UNKNOWN_LATENT = _Latent(_DEFAULT_SIDE, _DEFAULT_SIDE)


class _Reader:
    """Walks one API-format graph; every lookup is bounded and tolerant of odd inputs."""

    def __init__(self, graph: dict[str, Any], families: ModelFamilies | None = None) -> None:
        self.graph = graph
        self.families = families

    def node(self, link: Any) -> dict[str, Any] | None:
        if not is_link(link):
            return None
        node = self.graph.get(str(link[0]))
        return node if isinstance(node, dict) else None

    def inputs(self, node: dict[str, Any]) -> dict[str, Any]:
        inputs = node.get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def number(self, node: dict[str, Any], name: str, default: float | None) -> float | None:
        """A numeric input, resolving a link to a primitive node (`value`) or a same-named input."""
        value = self.inputs(node).get(name)
        for _ in range(8):
            if isinstance(value, bool):
                return float(value)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
            src = self.node(value)
            if src is None:
                return default
            src_inputs = self.inputs(src)
            value = src_inputs.get("value", src_inputs.get(name))
        return default

    def text(self, node: dict[str, Any], name: str) -> str | None:
        value = self.inputs(node).get(name)
        for _ in range(8):
            if isinstance(value, str):
                return value
            src = self.node(value)
            if src is None:
                return None
            src_inputs = self.inputs(src)
            value = src_inputs.get("value", src_inputs.get(name))
        return None

    # --- latent size -------------------------------------------------------------------

    def latent(self, link: Any, depth: int = 0) -> _Latent:
        node = self.node(link)
        if node is None or depth > _MAX_DEPTH:
            return _UNKNOWN_LATENT
        cls = str(node.get("class_type", ""))
        inputs = self.inputs(node)

        def upstream() -> _Latent:
            for name in _LATENT_INPUTS:
                if is_link(inputs.get(name)):
                    return self.latent(inputs[name], depth + 1)
            return _UNKNOWN_LATENT

        if cls == "RepeatLatentBatch":
            up = upstream()
            amount = self.number(node, "amount", 1.0) or 1.0
            return _Latent(up.width, up.height, up.frames, up.batch * max(1.0, amount))
        if "scale_by" in inputs:  # LatentUpscaleBy, ImageScaleBy
            up = upstream()
            s = self.number(node, "scale_by", 1.0) or 1.0
            return _Latent(up.width * s, up.height * s, up.frames, up.batch)
        width = self.number(node, "width", None)
        height = self.number(node, "height", None)
        if width is not None and height is not None:
            has_source = any(is_link(inputs.get(n)) for n in _LATENT_INPUTS)
            if has_source:  # LatentUpscale / ImageScale: 0 keeps the source's side or aspect
                up = upstream()
                if width <= 0 and height <= 0:
                    return up
                if width <= 0:
                    width = up.width * height / max(up.height, 1.0)
                if height <= 0:
                    height = up.height * width / max(up.width, 1.0)
                return _Latent(width, height, up.frames, up.batch)
            batch = self.number(node, "batch_size", None) or self.number(node, "batch", None) or 1.0
            length = self.number(node, "length", None)
            frames = (int(length) - 1) // 4 + 1 if length and length > 1 else 1
            return _Latent(max(width, 1.0), max(height, 1.0), float(frames), max(1.0, batch))
        return upstream()

    # --- samplers ----------------------------------------------------------------------

    def sampler_name(self, node: dict[str, Any]) -> str | None:
        name = self.text(node, "sampler_name")
        if name is not None:
            return name
        src = self.node(self.inputs(node).get("sampler"))
        if src is not None:
            cls = str(src.get("class_type", ""))
            if cls in _SAMPLER_CLASSES:
                return _SAMPLER_CLASSES[cls]
            return self.text(src, "sampler_name")
        return None

    def sigma_steps(self, node: dict[str, Any]) -> float | None:
        """Steps of the scheduler feeding `sigmas` (BasicScheduler, KarrasScheduler...)."""
        link = self.inputs(node).get("sigmas")
        for _ in range(_MAX_DEPTH):
            src = self.node(link)
            if src is None:
                return None
            steps = self.number(src, "steps", None)
            if steps is not None:
                return steps
            link = self.inputs(src).get("sigmas")
        return None

    def cfg_factor(self, node: dict[str, Any]) -> float:
        guider = self.node(self.inputs(node).get("guider"))
        if guider is not None:
            cls = str(guider.get("class_type", ""))
            if cls == "BasicGuider":
                return 0.5
            if cls == "DualCFGGuider":
                return 1.5
            node = guider
        cfg = self.number(node, "cfg", None)
        if cfg is not None and math.isclose(cfg, 1.0):
            return 0.5
        return 1.0

    def steps_run(self, node: dict[str, Any], depth: int = 0) -> float:
        cls = str(node.get("class_type", ""))
        inputs = self.inputs(node)
        if cls == "KSamplerAdvanced":
            steps = self.number(node, "steps", _DEFAULT_STEPS) or 0.0
            start = self.number(node, "start_at_step", 0.0) or 0.0
            end = self.number(node, "end_at_step", steps)
            end = steps if end is None else min(end, steps)
            return max(0.0, end - max(0.0, start))
        to_run = self.number(node, "steps_to_run", None)
        if to_run is not None and to_run > 0:
            return to_run
        steps = self.number(node, "steps", None)
        if steps is None and "sigmas" in inputs:
            steps = self.sigma_steps(node)
        if steps is None and depth < 8:  # a chain sampler continues its upstream one
            up = self.node(inputs.get("latent_image"))
            if up is not None and self.is_sampler(up):
                steps = self.steps_run(up, depth + 1)
        return max(0.0, steps if steps is not None else float(_DEFAULT_STEPS))

    def is_sampler(self, node: dict[str, Any]) -> bool:
        """A node that samples a latent: KSampler & co, SamplerCustom*, RES4LYF, lookalikes."""
        cls = str(node.get("class_type", ""))
        if cls in ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"):
            return True
        if "sampler" not in cls.lower():
            return False
        inputs = self.inputs(node)
        has_latent = any(n in inputs for n in ("latent_image", "latent", "latents", "samples"))
        has_steps = any(n in inputs for n in ("steps", "steps_to_run", "sigmas"))
        return has_latent and has_steps

    def sampler_units(self, node: dict[str, Any]) -> float:
        latent = self.latent(self.inputs(node).get("latent_image") or self.inputs(node).get("latent"))
        return (
            self.steps_run(node)
            * latent.megapixels
            * latent.frames
            * latent.batch
            * step_cost(self.sampler_name(node))
            * self.cfg_factor(node)
            * self.family_factor(node)
        )

    def loaded_model(self, node: dict[str, Any]) -> tuple[str, str] | None:
        """(models folder, file) of the loader feeding a sampler's model, through LoRAs,
        ModelSampling* patches and guiders."""
        link = self.inputs(node).get("model") or self.inputs(node).get("guider")
        for _ in range(_MAX_DEPTH):
            src = self.node(link)
            if src is None:
                return None
            cls = str(src.get("class_type", ""))
            if cls in model_family.LOADERS:
                key, folder = model_family.LOADERS[cls]
                name = self.text(src, key)
                return (folder, name) if name else None
            link = self.inputs(src).get("model") or self.inputs(src).get("guider")
        return None

    def family_factor(self, node: dict[str, Any]) -> float:
        loaded = self.loaded_model(node)
        if loaded is None:
            return 1.0
        folder, name = loaded
        if self.families is None:
            return model_family.FACTORS[model_family.family_from_name(name)]
        return self.families.factor(folder, name)


@dataclass(frozen=True)
class WorkloadModel:
    """Units of a graph or a request payload; the constants come from WorkerSettings.

    `templates` (a comfy_bridge TemplateStore) expands `modifier` requests; without it
    they count default_units.
    """

    request_units: float = REQUEST_UNITS
    default_units: float = DEFAULT_UNITS
    templates: Any = field(default=None, compare=False, repr=False)
    families: ModelFamilies | None = field(default=None, compare=False, repr=False)
    corrections: ShapeCorrections | None = field(default=None, compare=False, repr=False)

    def graph_units(self, graph: Any) -> float:
        """Units of an API-format graph (the formula in this module's docstring)."""
        units = self.base_units(graph)
        if self.corrections is not None and isinstance(graph, dict) and graph:
            units = round(units * self.corrections.factor(graph), 4)
        return units

    def observe(self, graph: Any, execution_ms: float) -> None:
        """A completed request's measured execution time: teaches the shape correction."""
        if self.corrections is not None and isinstance(graph, dict) and graph:
            self.corrections.observe(graph, self.base_units(graph), execution_ms / 1000)

    def base_units(self, graph: Any) -> float:
        """Units from the graph alone, before the learned shape correction."""
        if not isinstance(graph, dict) or not graph:
            return self.default_units
        try:
            reader = _Reader(graph, self.families)
            total = 0.0
            for node in graph.values():
                if isinstance(node, dict) and reader.is_sampler(node):
                    total += reader.sampler_units(node)
        except Exception:  # a malformed graph must not fail the request here
            log.warning("workload estimate failed; using the default", exc_info=True)
            return self.default_units
        units = self.request_units + total
        return round(units, 4) if math.isfinite(units) else self.default_units

    def payload_units(self, payload: Any) -> float:
        """Units of a PyWorker payload `{"input": {...}}` (or of a bare `input` object)."""
        if not isinstance(payload, dict):
            return self.default_units
        job = payload.get("input", payload)
        if not isinstance(job, dict):
            return self.default_units
        graph = job.get("workflow_json", job.get("workflow"))
        if graph is None and job.get("modifier"):
            graph = self.expand(job.get("modifier"), job.get("modifications") or {})
        return self.graph_units(graph)

    def expand(self, name: Any, modifications: Any) -> dict[str, Any] | None:
        """The graph a named template makes, or None when it cannot be made here."""
        if self.templates is None or not isinstance(name, str) or not isinstance(modifications, dict):
            return None
        try:
            graph = self.templates.expand(name, modifications)
        except Exception:
            return None
        return graph if isinstance(graph, dict) else None
