"""Signed webhook delivery of results (see sender.py for behaviour, signing.py for the Standard Webhooks headers)."""

from comfy_bridge.webhooks.sender import WebhookResult, WebhookSender
from comfy_bridge.webhooks.signing import sign, verify, whsec_form

__all__ = ["WebhookResult", "WebhookSender", "sign", "verify", "whsec_form"]
