"""Prompt validation with ComfyUI's error shapes (execution.validate_prompt at v0.3.64).

Behaviours kept on purpose: the first unknown class_type aborts with `invalid_prompt`;
a link of the wrong type is reported on the downstream node and its upstream node is
then *not* validated; upstream errors are listed once per node with every output that
depends on them; an output is dropped (and the prompt still accepted) when at least one
other output validates; values are coerced in place (int("7") -> 7) before queueing.
"""

from __future__ import annotations

from typing import Any

from .node_library import Folders, NodeDef


def _err(kind: str, message: str, details: str, extra: dict) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int) and not isinstance(v[1], bool)


def _input_info(class_inputs: dict, name: str) -> tuple[Any, str, dict]:
    for category in ("required", "optional", "hidden"):
        spec = class_inputs.get(category, {})
        if name in spec:
            entry = spec[name]
            if category == "hidden":
                return entry, category, {}
            entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
            return entry[0], category, (entry[1] if len(entry) > 1 else {})
    return None, "", {}


def _type_ok(received: str, expected: Any) -> bool:
    if not isinstance(expected, str) or not isinstance(received, str):
        return received == expected
    if received == "*" or expected == "*" or received == expected:
        return True
    return bool(set(expected.split(",")) & set(received.split(",")))


class Validator:
    def __init__(self, library: dict[str, NodeDef], folders: Folders):
        self.library = library
        self.folders = folders

    def _validate_node(self, prompt: dict, node_id: str, done: dict) -> tuple[bool, list, str]:
        if node_id in done:
            return done[node_id]
        node = prompt[node_id]
        inputs = node.setdefault("inputs", {})
        ndef = self.library[node["class_type"]]
        class_inputs = ndef.input_types(self.folders)
        names = list(class_inputs.get("required", {})) + [n for n in class_inputs.get("optional", {}) if n not in class_inputs.get("required", {})]
        errors: list[dict] = []
        valid = True
        for x in names:
            input_type, category, extra = _input_info(class_inputs, x)
            info = [input_type, extra]
            if x not in inputs:
                if category == "required":
                    errors.append(_err("required_input_missing", "Required input is missing", x, {"input_name": x}))
                continue
            val = inputs[x]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(_err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
                                       {"input_name": x, "input_config": info, "received_value": val}))
                    continue
                o_id, slot = val
                o_def = self.library[prompt[o_id]["class_type"]]
                received = o_def.return_types[slot]
                if not _type_ok(received, input_type):
                    errors.append(_err("return_type_mismatch", "Return type mismatch between linked nodes",
                                       f"{x}, received_type({received}) mismatch input_type({input_type})",
                                       {"input_name": x, "input_config": info, "received_type": received, "linked_node": val}))
                    continue
                r = self._validate_node(prompt, o_id, done)
                if r[0] is False:
                    valid = False
                continue
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            try:
                if input_type == "INT":
                    val = int(val)
                elif input_type == "FLOAT":
                    val = float(val)
                elif input_type == "STRING":
                    val = str(val)
                elif input_type == "BOOLEAN":
                    val = bool(val)
                inputs[x] = val
            except Exception as ex:
                errors.append(_err("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                                   f"{x}, {val}, {ex}",
                                   {"input_name": x, "input_config": info, "received_value": val, "exception_message": str(ex)}))
                continue
            if x in ndef.validate_inputs:
                continue
            if "min" in extra and val < extra["min"]:
                errors.append(_err("value_smaller_than_min", "Value {} smaller than min of {}".format(val, extra["min"]), x,
                                   {"input_name": x, "input_config": info, "received_value": val}))
                continue
            if "max" in extra and val > extra["max"]:
                errors.append(_err("value_bigger_than_max", "Value {} bigger than max of {}".format(val, extra["max"]), x,
                                   {"input_name": x, "input_config": info, "received_value": val}))
                continue
            if isinstance(input_type, list) and val not in input_type:
                config: Any = info
                if len(input_type) > 20:
                    list_info = f"(list of length {len(input_type)})"
                    config = None
                else:
                    list_info = str(input_type)
                errors.append(_err("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {list_info}",
                                   {"input_name": x, "input_config": config, "received_value": val}))
                continue
        if ndef.validate is not None:
            args = {k: inputs.get(k) for k in ndef.validate_inputs}
            r = ndef.validate(self.folders, args)
            if r is not True:
                for x in args:
                    details = x if r is False else f"{x} - {r}"
                    errors.append(_err("custom_validation_failed", "Custom validation failed for node", details, {"input_name": x}))
        result = (False, errors, node_id) if errors or not valid else (True, [], node_id)
        done[node_id] = result
        return result

    def validate(self, prompt: Any, partial: list[str] | None = None) -> tuple[bool, dict | None, list[str], dict]:
        if not isinstance(prompt, dict):
            return False, _err("invalid_prompt", "Cannot execute because the prompt is not an object.", "", {}), [], {}
        outputs: list[str] = []
        for x, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return False, _err("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                   f"Node ID '#{x}'", {}), [], {}
            ndef = self.library.get(node["class_type"])
            if ndef is None:
                return False, _err("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                   f"Node ID '#{x}'", {}), [], {}
            if ndef.output_node and (partial is None or x in partial):
                outputs.append(x)
        if not outputs:
            return False, _err("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
        good: list[str] = []
        failures: list[tuple[str, list]] = []
        node_errors: dict[str, dict] = {}
        done: dict = {}
        for o in outputs:
            try:
                ok, reasons, _ = self._validate_node(prompt, o, done)
            except Exception as ex:  # a malformed link, an out-of-range slot...
                ok = False
                reasons = [_err("exception_during_validation", "Exception when validating node", str(ex),
                                {"exception_type": type(ex).__qualname__, "traceback": []})]
                done[o] = (False, reasons, o)
            if ok:
                good.append(o)
                continue
            failures.append((o, reasons))
            for node_id, (v, rs, _) in done.items():
                if v is not True and rs:
                    entry = node_errors.setdefault(node_id, {"errors": rs, "dependent_outputs": [],
                                                             "class_type": prompt[node_id]["class_type"]})
                    entry["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, rs in failures for e in rs)
            return False, _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}), [], node_errors
        return True, None, good, node_errors
