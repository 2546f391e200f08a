"""Input files of a request (`images`): decoded or fetched, then placed where ComfyUI reads them.

Exports `InputStager` (stager.py); the four forms an input arrives in are in sources.py.
"""

from comfy_bridge.inputs.stager import InputStager

__all__ = ["InputStager"]
