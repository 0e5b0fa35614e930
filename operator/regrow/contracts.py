"""What regrow's processes tell each other: one model per message, used by the side that writes it and the side
that reads it, so that a field misspelt on either side is an error, not a value silently missing.

- A serving pod's model metadata (``GET /v2/models/<name>``): the Open Inference Protocol's, with regrow's
  parameters, which the operator reads to learn what each pod serves and where its alias points.
- A training pod's report (its container's termination message, and stdout), which the operator turns into the
  TrainingJob's status.

The serving pod's environment is the third (``regrow.manifests.serving.ServingEnv``, next to the manifest that
sets it); the statuses the operator writes go through the kinds' Status models (``regrow.controller.result``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from regrow.api.trainingjob import PromotionStatus, ValidationCheck


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class TensorMetadata(Message):
    name: str
    datatype: str
    shape: list[int]


class ModelParameters(Message):
    alias: str | None = None
    alias_version: str | None = Field(default=None, description="The version the alias resolved to when last read.")
    error: str | None = Field(default=None, description="Why no model is served, or the server is draining.")
    reason: Literal["ModelNotPublished", "ModelUnavailable"] | None = None
    uri: str | None = None
    task: str | None = None
    features: list[str] | None = None
    classes: list[Any] | None = None
    metrics: dict[str, Any] | None = None


class ModelMetadata(Message):
    """A serving pod's answer to ``GET /v2/models/<name>``; ``versions`` is empty until a model is loaded."""

    name: str
    versions: list[str]
    platform: str = "onnxruntime"
    inputs: list[TensorMetadata] | None = None
    outputs: list[TensorMetadata] | None = None
    parameters: ModelParameters = Field(default_factory=ModelParameters)

    @property
    def serving(self) -> str | None:
        """The version this pod serves, if it serves one and is not failing or draining."""
        return self.versions[0] if self.versions and not self.parameters.error else None


class TrainerReport(Message):
    """How a training run ended. A successful run names what it published (and the gate's decision); a failed
    one its reason (the Succeeded condition's) and a message that quotes no data."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    succeeded: bool
    reason: str | None = None
    message: str | None = None
    model: str | None = None
    version: str | None = None
    uri: str | None = None
    metric: str | None = None
    metrics: dict[str, str] = Field(default_factory=dict)
    parity_error: str | None = None
    train_seconds: str | None = None
    promotion: PromotionStatus | None = None
    validation: list[ValidationCheck] | None = None
