"""Named workflow templates (`workflows/NAME.json` + `NAME.params.json`), see protocol.py."""

from comfy_bridge.templates.store import Template, TemplateStore

__all__ = ["Template", "TemplateStore"]
