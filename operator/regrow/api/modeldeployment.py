"""ModelDeployment: serve a registry model with onnxruntime behind an autoscaled Deployment and Service."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from regrow.api.common import (
    ApiModel,
    Conditions,
    Duration,
    IntOrPercent,
    Name,
    ResourceRequirements,
    StorageSpec,
    StoreUri,
)

Version = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.\-]{0,62}$")]


class ModelSource(ApiModel):
    """The registry model to serve: follow an alias, or pin a version."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["alias"]}, {"required": ["version"]}]})

    registry: StoreUri
    name: Name
    alias: Name | None = Field(default=None, description="Follow this alias (e.g. champion) as it moves.")
    version: Version | None = Field(default=None, description="Serve exactly this version.")
    refresh_interval: Duration = Field(default="30s", description="How often the alias is looked up.")

    @model_validator(mode="after")
    def _alias_xor_version(self) -> ModelSource:
        if (self.alias is None) == (self.version is None):
            raise ValueError("set exactly one of model.alias and model.version")
        return self


class ReplicasSpec(ApiModel):
    min: int = Field(default=1, ge=1, le=1000)
    max: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _min_le_max(self) -> ReplicasSpec:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must not exceed replicas.max ({self.max})")
        return self


class AutoscalingSpec(ApiModel):
    target_cpu_utilization_percentage: int = Field(default=80, ge=1, le=100, alias="targetCPUUtilizationPercentage")


class RolloutSpec(ApiModel):
    strategy: Literal["RollingUpdate"] = "RollingUpdate"
    max_surge: IntOrPercent = Field(default="25%", description="Extra pods during a roll (count or percent).")


class PredictionLogSpec(ApiModel):
    """A sampled, bounded log of requests and responses, written in batches to the registry."""

    sample_percent: int = Field(default=0, ge=0, le=100)
    max_queue: int = Field(default=10000, ge=1, le=1_000_000, description="Records held before new ones drop.")


class ServerSpec(ApiModel):
    """Bounds each serving pod keeps under hostile or heavy clients; the defaults suit a 1-CPU pod."""

    max_connections: int = Field(
        default=1000, ge=1, le=100_000, description="Open connections at most; past it a new one gets 503."
    )
    max_rows: int = Field(
        default=10_000, ge=1, le=10_000_000,
        description="Rows in one inference request at most; past it 413 (inference runs on the event loop, "
        "health probes too).",
    )  # fmt: skip
    shed_after_milliseconds: int = Field(
        default=100, ge=1, le=60_000,
        description="An inference request that waited longer than this behind others gets 429 with "
        "Retry-After: 1, which bounds the wait of those answered (health and metrics are still answered).",
    )  # fmt: skip


DEFAULT_SERVER = ServerSpec()  # what a ModelDeployment's pods get when its spec.server sets none


class ModelDeploymentSpec(ApiModel):
    model: ModelSource
    storage: StorageSpec | None = None
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    resources: ResourceRequirements | None = Field(
        default=None,
        description="The server container's resources. Unset: requests cpu 500m and memory 256Mi, limits cpu 1 and "
        "memory 1Gi (the HPA measures CPU against the request; the server's threads follow the CPU limit).",
    )
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="Serving image; the operator's default if unset."
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    prediction_log: PredictionLogSpec | None = None
    server: ServerSpec = Field(default_factory=ServerSpec)

    @property
    def logs_predictions(self) -> bool:
        """Whether its pods log predictions (and so take feedback, signed with the deployment's key)."""
        return self.prediction_log is not None and self.prediction_log.sample_percent > 0


class ServingModelStatus(ApiModel):
    uri: str
    version: str


class ModelDeploymentStatus(ApiModel):
    observed_generation: int | None = None
    conditions: Conditions
    model: ServingModelStatus | None = Field(default=None, description="The model every ready pod serves.")
    desired_version: str | None = Field(default=None, description="The version the alias resolves to.")
    replicas: int | None = None
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    url: str | None = None
