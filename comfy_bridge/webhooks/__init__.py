"""Signed webhook delivery of results (see sender.py for behaviour, signing.py for the headers)."""

from comfy_bridge.webhooks.sender import WebhookResult, WebhookSender
from comfy_bridge.webhooks.signing import sign, verify

__all__ = ["WebhookResult", "WebhookSender", "sign", "verify"]
