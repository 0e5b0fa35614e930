"""The three kinds of regrow.dev/v1alpha1: names, spec and status models, and printer columns."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from regrow import GROUP, VERSION
from regrow.api.driftpolicy import DriftPolicySpec, DriftPolicyStatus
from regrow.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from regrow.api.trainingjob import TrainingJobSpec, TrainingJobStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_name: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]
    description: str

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"


def _condition(type_: str, field: str = "status") -> str:
    return f'.status.conditions[?(@.type=="{type_}")].{field}'


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

TRAINING_JOB = Kind(
    kind="TrainingJob",
    plural="trainingjobs",
    short_name="tj",
    spec=TrainingJobSpec,
    status=TrainingJobStatus,
    description="Trains a scikit-learn model in a Kubernetes Job and publishes a versioned ONNX artifact.",
    columns=(
        PrinterColumn("Model", ".spec.output.modelName"),
        PrinterColumn("Algorithm", ".spec.model.algorithm"),
        PrinterColumn("Version", ".status.artifact.version"),
        PrinterColumn("Succeeded", _condition("Succeeded")),
        PrinterColumn("Reason", _condition("Succeeded", "reason")),
        PrinterColumn("Promotion", ".status.promotion.outcome", priority=1),
        PrinterColumn("Job", ".status.jobName", priority=1),
        AGE,
    ),
)

MODEL_DEPLOYMENT = Kind(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_name="md",
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    description="Serves a registry model with onnxruntime behind an autoscaled Deployment and a Service.",
    columns=(
        PrinterColumn("Model", ".spec.model.name"),
        PrinterColumn("Alias", ".spec.model.alias"),
        PrinterColumn("Version", ".status.model.version"),
        PrinterColumn("Ready", _condition("Ready")),
        PrinterColumn("Replicas", ".status.readyReplicas", "integer"),
        PrinterColumn("Reason", _condition("Ready", "reason"), priority=1),
        PrinterColumn("URL", ".status.url", priority=1),
        AGE,
    ),
)

DRIFT_POLICY = Kind(
    kind="DriftPolicy",
    plural="driftpolicies",
    short_name="dp",
    spec=DriftPolicySpec,
    status=DriftPolicyStatus,
    description="Watches a ModelDeployment's live traffic for drift and retrains when the policy breaches.",
    columns=(
        PrinterColumn("Target", ".spec.targetRef.name"),
        PrinterColumn("Ready", _condition("Ready")),
        PrinterColumn("Drift", _condition("DriftDetected")),
        PrinterColumn("Drifted", ".status.lastCheck.driftedFeatures", "integer"),
        PrinterColumn("Samples", ".status.lastCheck.samples", "integer", priority=1),
        PrinterColumn("Last Check", ".status.lastCheck.time", "date"),
        AGE,
    ),
)

KINDS: tuple[Kind, ...] = (TRAINING_JOB, MODEL_DEPLOYMENT, DRIFT_POLICY)
BY_KIND = {k.kind: k for k in KINDS}
