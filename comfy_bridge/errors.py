"""The one error hierarchy of comfy-vast-worker.

Every failure a caller can see is one of these; each knows its HTTP status and whether
retrying the same request elsewhere can help, so the routes never guess.

    BridgeError                      (500, not retriable)
    ├── BadRequest                   422  the payload is malformed or names something wrong
    │   ├── PayloadTooLarge          413  body over the configured limit
    │   ├── RequestIdInUse           409  a different request with this request_id is in flight here
    │   ├── OutputNotFound           404  no spooled output under that spool_key (GET /outputs/...)
    │   ├── InvalidWorkflow          422  graph shape is wrong (no class_type, dangling link...)
    │   ├── UnknownTemplate          422  modifier names no template in workflows/
    │   ├── InvalidInputImage        422  an entry of `images` cannot be decoded or fetched
    │   ├── DestinationRefused       422  the request's own S3 target or webhook URL cannot work (checked before the GPU)
    │   └── WorkflowRejected         422  ComfyUI's own validation refused the prompt
    │       ├── MissingNodeClasses   422  class_types not installed (named, with the pack if known)
    │       └── MissingModels        422  *_name inputs whose file is absent (named, with folder)
    ├── ExecutionFailed              500  a node raised during execution (node id, type, message)
    │   └── OutOfMemory              500  the GPU ran out of memory (after the configured retry)
    ├── DeliveryFailed               502  outputs were made but could not be delivered
    ├── ComfyUnavailable             503  ComfyUI is down, starting or restarting (retriable)
    │   ├── ComfyUnrecoverable       503  ComfyUI is gone for good; the worker asks to be replaced
    │   │   └── ComfyIncomplete      503  ComfyUI answers but lacks node classes the worker needs
    │   └── ShuttingDown             503  the worker got SIGTERM and takes no new requests (retriable)
    ├── DeadlineExceeded             504  the request ran past its timeout; the prompt was interrupted
    ├── ProvisionFailed              500  ComfyUI, a node pack or a model could not be installed as the manifest says
    │   ├── ManifestInvalid          500  the provisioning manifest is wrong
    │   └── DownloadFailed           500  a model could not be downloaded or failed its sha256
    └── DeployFailed                 502  `comfy-worker deploy`: the deployment could not be read or converged
        ├── DeployConfigInvalid      422  deploy.toml is wrong or a ${VAR} it uses is unset (nothing was written)
        └── ControlPlaneRefused      502  the control plane answered an error (status, what to do)
            └── ControlPlaneUnauthorized 401  the API key was refused (named by source, never by value)
"""

from __future__ import annotations

from typing import Any, ClassVar


class BridgeError(Exception):
    """Base class: a message for humans, a machine `type`, and structured details."""

    status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retriable: bool | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if retriable is not None:  # this instance differs from its class (e.g. a fatal GPU error)
            self.retriable = retriable  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The `error` object of the failure body in the request contract."""
        body: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "retriable": self.retriable,
        }
        body.update({k: v for k, v in self.details.items() if v is not None})
        return body


class BadRequest(BridgeError):
    status = 422
    type = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    type = "payload_too_large"


class RequestIdInUse(BadRequest):
    """A request reuses the request_id of one still running on this worker, with another payload.

    Not retriable as is: the caller must pick a fresh request_id (or resend the same payload,
    which joins the run in flight).
    """

    status = 409
    type = "request_id_in_use"


class OutputNotFound(BadRequest):
    """The spool holds no file under the spool_key asked for (delivered since, or evicted)."""

    status = 404
    type = "output_not_found"


class InvalidWorkflow(BadRequest):
    type = "invalid_workflow"


class UnknownTemplate(BadRequest):
    type = "unknown_template"


class InvalidInputImage(BadRequest):
    type = "invalid_input_image"


class DestinationRefused(BadRequest):
    """A request's own S3 target or webhook is refused (address policy) or cannot work (no
    such bucket, rejected keys...): found before the prompt runs; `field` names the culprit."""

    type = "destination_refused"


class WorkflowRejected(BadRequest):
    """ComfyUI answered 400 to POST /prompt; `node_errors` is passed through."""

    type = "workflow_rejected"


class MissingNodeClasses(WorkflowRejected):
    type = "missing_node_classes"


class MissingModels(WorkflowRejected):
    type = "missing_models"


class ExecutionFailed(BridgeError):
    status = 500
    type = "execution_error"


class OutOfMemory(ExecutionFailed):
    type = "out_of_memory"


class DeliveryFailed(BridgeError):
    status = 502
    type = "delivery_failed"
    retriable = True


class ComfyUnavailable(BridgeError):
    status = 503
    type = "comfyui_unavailable"
    retriable = True


class ComfyUnrecoverable(ComfyUnavailable):
    type = "comfyui_unrecoverable"


class ShuttingDown(ComfyUnavailable):
    type = "shutting_down"


class DeadlineExceeded(BridgeError):
    status = 504
    type = "timeout"
    retriable = True


# --- provisioning (PROVISION): not HTTP answers, but the same shape for logs and reports ---


class ProvisionFailed(BridgeError):
    """ComfyUI, a custom node pack or a model could not be installed as the manifest says."""

    type = "provision_failed"


class ManifestInvalid(ProvisionFailed):
    type = "manifest_invalid"


class DownloadFailed(ProvisionFailed):
    type = "download_failed"


class ComfyIncomplete(ComfyUnrecoverable):
    """ComfyUI answers but lacks node classes the worker needs (a pack failed to import)."""

    type = "comfyui_incomplete"


# --- deployment (worker/deploy): not HTTP answers, but the same shape for the CLI's reports ---


class DeployFailed(BridgeError):
    """`comfy-worker deploy` could not read or converge the deployment."""

    status = 502
    type = "deploy_failed"


class DeployConfigInvalid(DeployFailed):
    status = 422
    type = "deploy_config_invalid"


class ControlPlaneRefused(DeployFailed):
    type = "control_plane_refused"


class ControlPlaneUnauthorized(ControlPlaneRefused):
    status = 401
    type = "control_plane_unauthorized"
