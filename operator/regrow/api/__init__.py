"""The regrow.dev/v1alpha1 API: pydantic models of the three kinds, the single source of truth."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from regrow.api.driftpolicy import DriftPolicySpec, DriftPolicyStatus
from regrow.api.kinds import BY_KIND, DRIFT_POLICY, KINDS, MODEL_DEPLOYMENT, TRAINING_JOB, Kind
from regrow.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from regrow.api.trainingjob import TrainingJobSpec, TrainingJobStatus

SpecT = TypeVar("SpecT", bound=BaseModel)


class InvalidSpec(ValueError):
    """A custom resource's spec that the API server accepted but regrow cannot run."""


def describe(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field by its path on the wire ("spec.replicas.min: ...")."""
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join([prefix, *(str(p) for p in item["loc"])])
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)


def parse_spec(model: type[SpecT], spec: Any) -> SpecT:
    """Validate a spec from the API, raising ``InvalidSpec`` with a readable message."""
    try:
        return model.model_validate(spec if spec is not None else {})
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None


def validate_object(obj: dict[str, Any]) -> BaseModel:
    """Validate a whole custom resource (as in a manifest file) by its kind."""
    kind = BY_KIND.get(str(obj.get("kind")))
    if kind is None or obj.get("apiVersion") != kind.api_version:
        raise InvalidSpec(f"not a regrow resource: apiVersion={obj.get('apiVersion')} kind={obj.get('kind')}")
    return parse_spec(kind.spec, obj.get("spec"))


__all__ = [
    "DRIFT_POLICY",
    "KINDS",
    "MODEL_DEPLOYMENT",
    "TRAINING_JOB",
    "DriftPolicySpec",
    "DriftPolicyStatus",
    "InvalidSpec",
    "Kind",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "describe",
    "parse_spec",
    "validate_object",
]
