"""DriftPolicy: watch a ModelDeployment's live traffic for drift and retrain when it breaches the policy."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from regrow.api.common import (
    ApiModel,
    Conditions,
    DecimalString,
    Duration,
    FractionString,
    LocalObjectReference,
    Name,
    ObjectName,
    Time,
    parse_duration,
)
from regrow.api.trainingjob import TrainingJobSpec


class DriftTestType(StrEnum):
    PSI = "psi"
    KS = "ks"
    JENSEN_SHANNON = "jensenShannon"
    CHI_SQUARE = "chiSquare"
    WASSERSTEIN = "wasserstein"


class DriftTest(ApiModel):
    """A statistical test of each feature's live bins against the reference profile's bins, and the score at
    which a feature counts as drifted."""

    type: DriftTestType = Field(
        description="psi: population stability index, drift above the threshold. "
        "ks: Kolmogorov-Smirnov distance between the binned distributions, drift above. "
        "jensenShannon: Jensen-Shannon distance (base 2, from 0 to 1), drift above. "
        "chiSquare: the p-value of Pearson's chi-square test that the reference and the window come from one "
        "distribution, drift BELOW the threshold. "
        "wasserstein: earth mover's distance in standard deviations of the reference, drift above."
    )
    threshold: DecimalString | None = Field(
        default=None,
        description="Left out (recommended): calibrated at every check for the reference's rows, the window's "
        "rows and the feature's bins, as the score that windows without drift pass 5% of the time, so that a "
        "feature that has not drifted is flagged in at most 5% of checks at any traffic volume. Set: a fixed "
        "score on the test's own scale, whatever the sample sizes (see type for its direction).",
    )


class PrometheusSource(ApiModel):
    url: Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~%!$&'()*+,;=:/-]*)?$",
                                          max_length=2048)] = Field(
        description="The Prometheus server's base URL, such as http://prometheus.monitoring:9090: no user, query "
        "or fragment. The operator queries only the URLs its settings allow (the chart's drift.prometheusUrls).",
    )  # fmt: skip
    labels: dict[str, str] | None = Field(
        default=None,
        description="Label values that select the target's series besides model and version. "
        'Default: {"namespace": <the policy\'s namespace>}, the label the Prometheus Operator sets.',
    )

    @model_validator(mode="after")
    def _label_names(self) -> PrometheusSource:
        bad = [name for name in self.labels or {} if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name)]
        if bad:
            raise ValueError(f"source.prometheus.labels: {', '.join(bad)} is not a Prometheus label name")
        return self


class DriftSource(ApiModel):
    """Where live bin counts come from: the serving pods' /metrics (default) or a Prometheus server."""

    type: Literal["Pods", "Prometheus"] = "Pods"
    prometheus: PrometheusSource | None = None

    @model_validator(mode="after")
    def _prometheus_needs_url(self) -> DriftSource:
        if (self.type == "Prometheus") != (self.prometheus is not None):
            raise ValueError("source.prometheus is required with type Prometheus and only then")
        return self


class ObjectMetaTemplate(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingJobTemplate(ApiModel):
    metadata: ObjectMetaTemplate = Field(default_factory=ObjectMetaTemplate)
    spec: TrainingJobSpec


class RetrainSpec(ApiModel):
    template: TrainingJobTemplate
    cooldown: Duration = Field(default="1h", description="Minimum time between two retrains.")
    max_concurrent: int = Field(default=1, ge=1, le=10)
    approval: Literal["Automatic", "Manual"] = "Automatic"


class DriftPolicySpec(ApiModel):
    target_ref: LocalObjectReference = Field(description="The ModelDeployment to watch.")
    tests: list[DriftTest] | None = Field(
        default=None,
        description="The tests each feature is scored by. Unset: by the feature's type, each calibrated: psi for "
        "a numeric feature, chiSquare for a categorical one (the predicted classes included).",
        min_length=1,
        max_length=5,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    drift_share: FractionString = Field(
        default="0.5", description="Share of the input features that must drift for the check to breach."
    )
    count_prediction_drift: bool = Field(
        default=False,
        description="Count the model's predictions (the feature __prediction__: class shares, or bins of a "
        "regressor's outputs, against the training holdout's) among the features driftShare applies to. "
        "Otherwise their drift is scored and reported only.",
    )
    window: Duration = "10m"
    interval: Duration = Field(
        default="1m",
        description="How often to check: 1s at least, and no more often "
        "than the operator allows (the chart's drift.minCheckSeconds, 10 by default).",
    )
    min_samples: int = Field(default=500, ge=1)
    consecutive_breaches: int = Field(default=2, ge=1, le=100)
    source: DriftSource = Field(default_factory=DriftSource)
    retrain: RetrainSpec | None = None

    def thresholds(self) -> dict[DriftTestType, Decimal | None]:
        """Each test's threshold, None for a calibrated one."""
        if self.tests is None:
            return {DriftTestType.PSI: None, DriftTestType.CHI_SQUARE: None}
        return {t.type: None if t.threshold is None else Decimal(t.threshold) for t in self.tests}

    @model_validator(mode="after")
    def _unique_tests(self) -> DriftPolicySpec:
        kinds = [t.type for t in self.tests or []]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each test type may appear once in tests")
        return self

    @model_validator(mode="after")
    def _some_interval(self) -> DriftPolicySpec:
        if parse_duration(self.interval) < 1:
            raise ValueError("interval must be 1s at least")
        return self


class FeatureDrift(ApiModel):
    name: str
    scores: dict[str, str] = Field(default_factory=dict, description="Each test's score, by test type.")
    thresholds: dict[str, str] = Field(
        default_factory=dict, description="The threshold each score was held against: calibrated or as set."
    )
    drifted: bool
    unscored: list[str] = Field(
        default_factory=list, description="The policy's tests that do not apply here (ks and wasserstein: an order "
        "a categorical feature does not have).",
    )  # fmt: skip
    other_share: str | None = Field(
        default=None, description="A categorical input's share of live values in none of its training categories "
        "(rarer there, or never seen).",
    )  # fmt: skip


class DriftCheck(ApiModel):
    time: Time
    version: str
    samples: int
    drifted_features: int
    breached: bool
    features: list[FeatureDrift] = Field(default_factory=list, max_length=256)


RetrainOutcome = Literal["Failed", "Rejected", "Published", "RolledBack", "Serving", "Deleted"]


class RetrainRecord(ApiModel):
    """One retrain and what became of it: its TrainingJob failed, its gate rejected the model, it published
    without promoting, its canary rolled back, or the target serves it (unset while that is not known yet)."""

    name: ObjectName
    created: Time
    check_time: Time
    version: str | None = None
    outcome: RetrainOutcome | None = None


class DriftPolicyStatus(ApiModel):
    observed_generation: int | None = None
    conditions: Conditions
    last_check: DriftCheck | None = None
    consecutive_breaches: int = 0
    last_retrain_time: Time | None = None
    retrains: int = Field(default=0, description="TrainingJobs this policy has created, in all.")
    training_jobs: list[RetrainRecord] = Field(
        default_factory=list, max_length=20, description="The most recent TrainingJobs this policy created."
    )
    pending_approval: Name | None = None
    retrain_outcomes: dict[RetrainOutcome, int] = Field(
        default_factory=dict, description="How the retrains this policy created ended, in all, by outcome."
    )
