"""ModelDeployment: serve a registry model with onnxruntime behind an autoscaled Deployment and Service."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from regrow.api.common import (
    ApiModel,
    Conditions,
    DecimalString,
    Duration,
    FractionString,
    IntOrPercent,
    Name,
    ObjectName,
    ResourceRequirements,
    StorageSpec,
    StoreUri,
    Time,
    parse_duration,
)
from regrow.api.pod import PodOptions

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


class CanaryStep(ApiModel):
    """One step of a canary: the candidate answers ``weight`` percent of the requests while the analysis
    judges it, or, at a shadow step (``mirror``), answers none: the stable pods mirror that percent of the
    requests they answered to it and compare its answers with theirs. A step is judged once it has its
    evidence (``minRequests`` answered by the candidate at this step, else its ``pause`` over); a failed gate
    then rolls back at once, and the step is passed once every gate passes and its ``pause`` is over."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["weight"]}, {"required": ["mirror"]}]})

    weight: int | None = Field(
        default=None, ge=1, le=99,
        description="Percent of the requests the candidate answers, reached by the ratio of candidate pods to "
        "stable pods (the nearest a whole number of pods allows; status.rollout.weight says what it is).",
    )  # fmt: skip
    mirror: int | None = Field(
        default=None, ge=1, le=100,
        description="A shadow step: the percent of the requests the stable pods answer that they also send to the "
        "candidate, after answering, through a bounded queue. Its answers reach no client; they are compared with "
        "the stable version's (analysis.maxDisagreement). Shadow steps come before any weight.",
    )  # fmt: skip
    pause: Duration | None = Field(default=None, description="Stay at least this long at this step.")
    min_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Requests the candidate answers or fails (2xx, 5xx: refused ones count for nothing) at this "
        "step, then it is judged; at a shadow step, those the stable pods mirrored to it.",
    )
    max_wait: Duration = Field(
        default="10m", description="A gate that cannot be measured by then (too few requests, no ready pod) fails."
    )

    @model_validator(mode="after")
    def _evidence(self) -> CanaryStep:
        if (self.weight is None) == (self.mirror is None):
            raise ValueError("a canary step sets exactly one of weight and mirror")
        if self.pause is None and self.min_requests is None:
            raise ValueError(f"a canary step ({self.describe()}) needs a pause, minRequests or both")
        return self

    def describe(self) -> str:
        return f"weight {self.weight}" if self.mirror is None else f"mirror {self.mirror}%"


class CanaryAnalysis(ApiModel):
    """Gates on the candidate's live metrics over each step, read from the serving pods' own counters."""

    max_error_share: FractionString = Field(
        default="0.01",
        description="Share of the candidate's answers (2xx, 5xx) that may be 5xx; refused requests (4xx, 429s "
        "from load shedding among them) are neither errors nor counted.",
    )
    max_p99_seconds: DecimalString | None = Field(
        default=None,
        description="The candidate's p99 latency at most (from its answers' latency histogram; at a shadow step, "
        "as the stable pods timed the mirrored requests).",
    )
    max_prediction_divergence: FractionString | None = Field(
        default="0.5",
        description="A loose sanity bound: the Jensen-Shannon distance (base 2, 0 to 1) between the candidate's "
        "predictions and the stable version's over the step. A retrain after drift is meant to predict "
        "differently; this catches the absurd, not the new.",
    )
    max_quality_drop: FractionString | None = Field(
        default=None,
        description="Live quality from feedback, for a prediction log whose ids clients label: how much worse "
        "the candidate may do than the stable version on the labels of the step's predictions (accuracy lost, or "
        "for a regressor the mean absolute error's relative increase). Each id counts once, and only if it was "
        "issued inside the step; labels are read from the store, a few seconds after they are posted. Only "
        "requests of at most 16 rows are graded (their prediction ids carry what was predicted); labels of larger "
        "ones count as feedback, not here. Unset: not gated.",
    )
    min_labels: int = Field(
        default=50, ge=1, le=1_000_000, description="Labelled rows each version needs before quality is compared."
    )
    max_disagreement: DecimalString | None = Field(
        default="0.5",
        description="At a shadow step: how far the candidate's answers may stray from the stable version's on the "
        "same requests, over 50 compared rows at least: the share of rows it labels otherwise (a classifier), or "
        "the mean absolute difference relative to the stable predictions' mean magnitude (a regressor). Unset: "
        "not gated.",
    )


class RolloutSpec(ApiModel):
    """How a new version reaches the pods. RollingUpdate replaces them; Canary runs the candidate beside the
    stable version in a Deployment of its own, steps its share of traffic up while its live metrics pass the
    analysis, and rolls back by itself when they do not."""

    strategy: Literal["RollingUpdate", "Canary"] = "RollingUpdate"
    max_surge: IntOrPercent = Field(default="25%", description="Extra pods during a roll (count or percent).")
    steps: list[CanaryStep] = Field(default_factory=list, max_length=20, description="Canary steps, weights rising.")
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    approval: Literal["Automatic", "Manual"] = Field(
        default="Automatic",
        description="Manual: after its last step the canary waits for `regrow promote` (or `regrow rollback`).",
    )

    @model_validator(mode="after")
    def _steps(self) -> RolloutSpec:
        if self.strategy == "Canary" and not self.steps:
            raise ValueError("rollout.strategy Canary needs rollout.steps")
        if self.strategy != "Canary" and self.steps:
            raise ValueError("rollout.steps apply to strategy Canary only")
        kinds = [step.mirror is not None for step in self.steps]
        if any(not a and b for a, b in itertools.pairwise(kinds)):
            raise ValueError("rollout.steps: shadow steps (mirror) come before any step with a weight")
        weights = [step.weight for step in self.steps if step.weight is not None]
        if any(a >= b for a, b in itertools.pairwise(weights)):
            raise ValueError(f"rollout.steps' weights must rise: {weights}")
        return self

    @property
    def mirrors(self) -> bool:
        """Whether any step is a shadow step (the stable pods then know where to mirror)."""
        return any(step.mirror is not None for step in self.steps)


class PredictionLogSpec(ApiModel):
    """A sampled, bounded log of requests and responses, written in batches to the registry."""

    sample_percent: int = Field(default=0, ge=0, le=100)
    max_queue: int = Field(default=10000, ge=1, le=1_000_000, description="Records held before new ones drop.")
    retention: Duration = Field(
        default="720h",
        description="How long the log's files (predictions, and the labels posted for them) are kept: the serving "
        "pods delete older ones, every version's, about once an hour. A retention shorter than labelHorizon "
        "loses the predictions that late labels are for. At least 1h.",
    )
    label_horizon: Duration = Field(
        default="720h",
        description="How long after a prediction a label is taken for it: the serving pods refuse an older id "
        "(expired). At least 1h.",
    )

    @field_validator("retention", "label_horizon")
    @classmethod
    def _an_hour_at_least(cls, value: str, info: ValidationInfo) -> str:
        if parse_duration(value) < 3600:
            raise ValueError(f"predictionLog.{to_camel(info.field_name or '')} is 1h at least")
        return value


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


class Labeller(ApiModel):
    """Someone who may label the deployment's predictions: a CRM, a fraud desk, a warehouse join."""

    name: Name = Field(description="Recorded with each label it gives.")
    secret_name: ObjectName = Field(
        description="A Secret in the namespace whose every value is a token of this labeller (16 bytes at least), "
        "sent in the regrow-labeller-token header: two keys while one is rotated; delete a key to revoke it (the "
        "pods see a change within about a minute, without a restart). The operator never reads it: the serving "
        "pods mount it."
    )


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
    labellers: list[Labeller] = Field(
        default_factory=list, max_length=16,
        description="Who may label predictions, each by a token. Named, anonymous feedback is refused (401); unset, "
        "any client that was given a prediction id may label it.",
    )  # fmt: skip
    server: ServerSpec = Field(default_factory=ServerSpec)
    pod: PodOptions | None = Field(
        default=None, description="Where and how the serving pods (and the Jobs that move the alias back) run."
    )

    @property
    def logs_predictions(self) -> bool:
        """Whether its pods log predictions (and so take feedback, signed with the deployment's key)."""
        return self.prediction_log is not None and self.prediction_log.sample_percent > 0

    @property
    def keyed(self) -> bool:
        """Whether its pods hold the deployment's key: to sign prediction ids, or for the handshake between the
        stable pods and a shadow candidate's."""
        return self.logs_predictions or self.rollout.mirrors

    @model_validator(mode="after")
    def _labels_can_arrive(self) -> ModelDeploymentSpec:
        if self.rollout.analysis.max_quality_drop is not None and not self.logs_predictions:
            raise ValueError(
                "rollout.analysis.maxQualityDrop grades predictions by their labels, which clients post for the "
                "ids of logged predictions: set predictionLog.samplePercent above 0"
            )
        if self.labellers and not self.logs_predictions:
            raise ValueError("labellers label logged predictions: set predictionLog.samplePercent above 0")
        names = [labeller.name for labeller in self.labellers]
        if len(set(names)) != len(names):
            raise ValueError("labellers: each name once")
        return self


class ServingModelStatus(ApiModel):
    uri: str
    version: str


class AliasStatus(ApiModel):
    """Where the followed alias points, as the newest reading known to the operator says: the serving pods read
    the registry and report it, and a promoting TrainingJob records it. Each move of the alias raises its
    generation by one, so a reading of a lower generation is older, whoever made it."""

    ref: str = Field(description="The alias read: <registry>/<model>@<alias>.")
    version: str
    generation: int = Field(ge=0)


class GateStatus(ApiModel):
    """One gate of the analysis as last measured at the current step."""

    name: Literal["errorShare", "p99Seconds", "predictionDivergence", "qualityDrop", "disagreement"]
    threshold: str
    value: str | None = Field(default=None, description="Unset: not measurable yet.")
    passed: bool | None = None


class StepRecord(ApiModel):
    """A step the candidate passed: its weight, its requests and its gates as judged."""

    step: int
    weight: int
    mirror: int | None = None
    requests: int
    mirrored: int = 0
    gates: list[GateStatus] = Field(default_factory=list)
    passed: Time


class RolloutDecision(ApiModel):
    """A person's `regrow promote` or `regrow rollback`: who they said they are, and why."""

    action: Literal["Promote", "Rollback"]
    actor: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    time: Time

    @field_validator("reason", mode="before")
    @classmethod
    def _no_empty_reason(cls, value: object) -> object:
        return value or None  # an older CLI wrote "": no reason (an empty string cannot be written to status)


class RetryRequest(ApiModel):
    """`regrow promote <md> --version <v>`: try a version a canary rolled back again."""

    version: Version
    actor: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    time: Time

    @field_validator("reason", mode="before")
    @classmethod
    def _no_empty_reason(cls, value: object) -> object:
        return value or None  # an older CLI wrote "": no reason (an empty string cannot be written to status)


class RolloutStatus(ApiModel):
    """The latest canary: where it stands, or how it ended."""

    candidate: Version
    stable: Version
    started: Time
    step: int = Field(ge=1, description="The current step (1-based); one past the last while promoting.")
    weight: int = Field(ge=0, le=100, description="Percent of the serving pods that are the candidate's now.")
    mirror: int | None = Field(
        default=None, description="At a shadow step: the percent of the stable pods' requests mirrored to it."
    )
    step_started: Time
    requests: int = Field(default=0, description="Requests the candidate answered at this step.")
    mirrored: int = Field(
        default=0,
        description="At a shadow step: requests the stable pods sampled for the candidate (those it did not answer "
        "were dropped by a full queue, failed, or found no shadow pod).",
    )
    gates: list[GateStatus] = Field(default_factory=list)
    passed: list[StepRecord] = Field(default_factory=list, max_length=20, description="The steps passed so far.")
    outcome: Literal["Promoted", "RolledBack"] | None = Field(default=None, description="Unset while it runs.")
    message: str = ""
    finished: Time | None = None
    decision: RolloutDecision | None = None


Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class FeedbackKeyStatus(ApiModel):
    """The deployment's key (it signs prediction ids and proves a shadow's pods), as the operator made it: it
    creates the Secret and never reads it, so this record is how it knows the Secret is its own."""

    generation: int = Field(ge=1, description="Each key regrow makes for the deployment adds one.")
    secret_name: ObjectName = Field(description="The Secret that holds it.")
    fingerprint: Fingerprint = Field(description="Names the key without saying anything of it (pods report theirs).")
    previous_fingerprint: Fingerprint | None = Field(
        default=None, description="The key before the last rotation: ids it signed still verify."
    )
    previous_generation: int | None = Field(default=None, ge=1, description="The key before's generation.")
    rotation: str | None = Field(
        default=None, max_length=64,
        description="The last regrow.dev/rotate-feedback-key annotation acted on (regrow rotate-key sets it).",
    )  # fmt: skip


class ModelDeploymentStatus(ApiModel):
    observed_generation: int | None = None
    conditions: Conditions
    model: ServingModelStatus | None = Field(
        default=None,
        description="The model every ready pod serves, once the Deployment has rolled out (terminatingReplicas old "
        "pods may still be answering requests they had received).",
    )
    desired_version: str | None = Field(
        default=None,
        description="The version the stable pods are to serve: where the alias resolves, once any canary of it has "
        "passed (a running canary's candidate is in rollout.candidate).",
    )
    alias: AliasStatus | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    terminating_replicas: int | None = Field(
        default=None,
        description="Stable pods shutting down: out of the Service's endpoints, they finish what they received. "
        "A canary starts once there are none.",
    )
    url: str | None = None
    rollout: RolloutStatus | None = None
    promotions: int = Field(default=0, description="Canaries that reached every pod, in all.")
    rollbacks: int = Field(default=0, description="Canaries rolled back, in all.")
    rejected_versions: list[Version] = Field(
        default_factory=list, max_length=20,
        description="Versions a canary rolled back: not tried again until `regrow promote --version` asks.",
    )  # fmt: skip
    last_retry: RetryRequest | None = Field(
        default=None,
        description="The last `regrow promote --version` seen: taken, or refused (with an Event) when the version "
        "was not rolled back.",
    )
    feedback_key: FeedbackKeyStatus | None = None
