"""Input files of a request (`images`): decoded or fetched, then placed where ComfyUI reads them.

Exports `InputStager`. Imported lazily so that `comfy_bridge.inputs.netguard`, which the
S3 destination and the webhook sender also use, loads without the stager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfy_bridge.inputs.stager import InputStager

__all__ = ["InputStager"]


def __getattr__(name: str) -> Any:
    if name == "InputStager":
        from comfy_bridge.inputs.stager import InputStager

        return InputStager
    raise AttributeError(name)
