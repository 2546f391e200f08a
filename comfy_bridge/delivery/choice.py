"""Which destination a request's outputs go to.

S3 when a request's `s3` object or the S3_* environment names a bucket (see
delivery/s3.py), inline base64 otherwise; the job runner never changes.
"""

from __future__ import annotations

import weakref
from typing import Any

from comfy_bridge.delivery.base import Destination
from comfy_bridge.delivery.inline import InlineDestination
from comfy_bridge.schemas.job import JobInput
from comfy_bridge.settings import BridgeSettings


def uses_s3(job: JobInput, settings: BridgeSettings) -> bool:
    """S3 when the request names a bucket, or the environment does and the request did not
    ask for base64 (`return_outputs_as_base64: true`)."""
    own_bucket = bool(job.s3 and job.s3.bucket_name)
    return own_bucket or bool(settings.s3.bucket_name and job.return_outputs_as_base64 is not True)


def result_wanted_without_caller(job: JobInput, settings: BridgeSettings) -> bool:
    """Whether a request whose caller left should still run: its outputs go to S3 or its
    result to a webhook. Inline outputs for nobody are not: the GPU is freed instead."""
    return job.webhook is not None or uses_s3(job, settings)


def pick(job: JobInput, settings: BridgeSettings) -> Destination:
    """S3 when uses_s3(); inline otherwise."""
    if uses_s3(job, settings):
        from comfy_bridge.delivery import s3  # boto3 loads only where S3 is used

        return _shared_s3(settings, s3)
    return InlineDestination(settings)


# One S3 destination per settings object: it holds boto3 clients and their thread pools.
_s3_destinations: dict[int, tuple[weakref.ref[BridgeSettings], Destination]] = {}


def _shared_s3(settings: BridgeSettings, s3: Any) -> Destination:
    entry = _s3_destinations.get(id(settings))
    if entry is not None and entry[0]() is settings:
        return entry[1]
    destination = s3.S3Destination(settings)
    _s3_destinations[id(settings)] = (weakref.ref(settings), destination)
    weakref.finalize(settings, _drop, id(settings), destination)
    return destination


def _drop(key: int, destination: Any) -> None:
    entry = _s3_destinations.get(key)
    if entry is not None and entry[1] is destination:
        del _s3_destinations[key]
    destination.close()
