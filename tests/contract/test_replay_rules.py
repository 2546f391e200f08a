"""The replayer's comparison rules: lenient exactly where ComfyUI itself is not deterministic."""

from __future__ import annotations

from .replay import shape_diff

MIN = {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width",
       "extra_info": {"input_name": "width"}}
MISSING = {"type": "required_input_missing", "message": "Required input is missing", "details": "height",
           "extra_info": {"input_name": "height"}}


def test_one_nodes_errors_compare_in_any_order() -> None:
    exp = {"node_errors": {"1": {"errors": [MIN, MISSING], "class_type": "EmptyImage"}}}
    got = {"node_errors": {"1": {"errors": [MISSING, MIN], "class_type": "EmptyImage"}}}
    assert shape_diff(exp, got) == []


def test_a_different_error_in_the_list_is_still_a_difference() -> None:
    other = {**MISSING, "type": "value_bigger_than_max"}
    exp = {"node_errors": {"1": {"errors": [MIN, MISSING]}}}
    got = {"node_errors": {"1": {"errors": [other, MIN]}}}
    assert shape_diff(exp, got) != []


def test_other_lists_keep_their_order() -> None:
    exp = {"errors": [MIN, MISSING]}  # not under node_errors: order matters
    assert shape_diff(exp, {"errors": [MISSING, MIN]}) != []
    assert shape_diff(exp, {"errors": [MIN, MISSING]}) == []
