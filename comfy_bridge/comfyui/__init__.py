"""Everything that speaks ComfyUI's protocol: the client, its events, graph checks."""

from comfy_bridge.comfyui.client import ComfyClient, PromptResult, PromptTracker

__all__ = ["ComfyClient", "PromptResult", "PromptTracker"]
