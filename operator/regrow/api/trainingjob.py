"""TrainingJob: train a scikit-learn model in a batch/v1 Job and publish it to the registry."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from regrow.api.common import (
    ApiModel,
    Conditions,
    DecimalString,
    Duration,
    Name,
    ObjectName,
    ResourceRequirements,
    StorageSpec,
    StoreUri,
    Time,
)
from regrow.api.pod import PodOptions


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Algorithm(StrEnum):
    LOGISTIC_REGRESSION = "logisticRegression"
    RANDOM_FOREST = "randomForest"
    GRADIENT_BOOSTING = "gradientBoosting"
    RIDGE = "ridge"
    RANDOM_FOREST_REGRESSOR = "randomForestRegressor"
    GRADIENT_BOOSTING_REGRESSOR = "gradientBoostingRegressor"

    @property
    def task(self) -> Task:
        return Task.REGRESSION if self in _REGRESSORS else Task.CLASSIFICATION


_REGRESSORS = frozenset({Algorithm.RIDGE, Algorithm.RANDOM_FOREST_REGRESSOR, Algorithm.GRADIENT_BOOSTING_REGRESSOR})


class Metric(StrEnum):
    ACCURACY = "accuracy"
    F1 = "f1"
    ROC_AUC = "rocAuc"
    RMSE = "rmse"
    R2 = "r2"

    @property
    def task(self) -> Task:
        return Task.REGRESSION if self in (Metric.RMSE, Metric.R2) else Task.CLASSIFICATION

    @property
    def higher_is_better(self) -> bool:
        return self is not Metric.RMSE


DEFAULT_METRIC = {Task.CLASSIFICATION: Metric.ACCURACY, Task.REGRESSION: Metric.RMSE}

ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ParamValue = int | Annotated[str, StringConstraints(max_length=256)]


class FeedbackSpec(ApiModel):
    """Labelled live traffic to train on besides the dataset: the predictions a ModelDeployment logged
    (``predictionLog``), joined to the labels posted to its ``/feedback``, from ``output.registry``."""

    model_name: Name | None = Field(default=None, description="Whose traffic; output.modelName if unset.")
    max_rows: int = Field(
        default=100_000, ge=1, le=10_000_000,
        description="At most this many, the newest, shared evenly among the labellers (what one leaves goes to "
        "the others). Only named labellers' labels are read; anonymous ones never train.",
    )  # fmt: skip
    window: Duration = Field(
        default="720h",
        description="Only what was logged within this long before the run is read: predictions, and the labels "
        "posted for them (taken for the ModelDeployment's predictionLog.labelHorizon after a prediction).",
    )
    outside_support: Literal["Allow", "Corroborated", "Approved"] = Field(
        default="Allow",
        description="What labelled live rows outside the curated data's support (a number beyond its range, a "
        "category none of its rows has) need before they may decide a promotion, where the curated holdout "
        "cannot check them: Allow, a named labeller's label is enough; Corroborated, a second labeller gave the "
        "same label, else the rows are left out; Approved, a model trained on any is published but not "
        "promoted: a person moves the alias (regrow move-alias).",
    )


class ValidationSpec(ApiModel):
    """The checks a dataset must pass before training. With promote, a contract taken from the alias's current
    model comes first: the same feature columns, the same task and kind of labels, and no label it does not
    know (hard checks unless contract is Report); missing values and value ranges are compared with its
    training data and reported, failing only through the rules below, since a retrain is meant to see moved
    data."""

    contract: Literal["Enforce", "Report"] = Field(
        default="Enforce", description="Enforce: a dataset that breaks the current model's contract fails."
    )
    min_rows: int | None = Field(default=None, ge=1, description="The fewest labelled rows the dataset may have.")
    max_missing_percent: int | None = Field(
        default=None, ge=0, le=100, description="The most missing values any feature may have, in percent of rows."
    )
    required_columns: list[ColumnName] = Field(default_factory=list, max_length=1024)
    allowed_labels: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(
        default=None, max_length=1000, description="The labels the target may hold, compared as text (classification)."
    )
    max_label_shift_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="How far any class's share of the rows may move from the current model's training data, in "
        "percentage points (classification).",
    )


class DatasetSpec(ApiModel):
    """Where the training data is and which column is the target."""

    uri: StoreUri
    format: Literal["csv", "parquet"] = "csv"
    target: ColumnName = Field(description="The column to predict.")
    features: list[ColumnName] | None = Field(
        default=None, max_length=1024, description="Feature columns; all columns but the target if unset."
    )
    categorical: list[ColumnName] | None = Field(
        default=None, max_length=1024,
        description="Feature columns that are categories, whatever their values look like (integer codes). By "
        "default a column of strings, booleans or pandas categories is categorical.",
    )  # fmt: skip
    numeric: list[ColumnName] | None = Field(
        default=None, max_length=1024, description="Feature columns that are numbers (a failed parse is an error)."
    )
    max_categories: int = Field(
        default=20, ge=2, le=1000,
        description="Categories kept per categorical column, the most frequent; the rest are one group, as are "
        "categories never seen in training. The drift profile keeps the same ones.",
    )  # fmt: skip
    feedback: FeedbackSpec | None = Field(
        default=None, description="Add the labelled live traffic (in the features' order) to the dataset."
    )
    validation: ValidationSpec = Field(default_factory=ValidationSpec)

    @model_validator(mode="after")
    def _kinds(self) -> DatasetSpec:
        both = sorted(set(self.categorical or []) & set(self.numeric or []))
        if both:
            raise ValueError(f"dataset.categorical and dataset.numeric both name {', '.join(both)}")
        return self


class ModelSpec(ApiModel):
    """The estimator and its hyperparameters."""

    algorithm: Algorithm
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        description='scikit-learn parameters by their scikit-learn name; decimals as strings ("0.5").',
    )


class EvaluationSpec(ApiModel):
    """How the model is scored on a deterministic holdout."""

    metric: Metric | None = Field(default=None, description="accuracy for classifiers, rmse for regressors if unset.")
    holdout_percent: int = Field(default=20, ge=5, le=50)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class OutputSpec(ApiModel):
    """Where the model version is published."""

    registry: StoreUri
    model_name: Name


DEFAULT_MAX_REGRESSION = "0.05"


class PromoteSpec(ApiModel):
    """Move an alias to the new version when it passes the gate: it beats the alias's current model on the
    live holdout (held-out labelled live traffic, split by prediction id; the curated holdout when there is
    none), and it scores no worse than allowed on the curated dataset's holdout, which live labels cannot
    reach."""

    alias: Name
    min_improvement: DecimalString = Field(
        default="0",
        description="How much better the new model's metric must be than the current one's, on the live holdout "
        "(the curated one when no labelled live rows were held out).",
    )
    max_regression: DecimalString = Field(
        default=DEFAULT_MAX_REGRESSION,
        description="How much worse, in the metric's units, the new model may score on the curated dataset's "
        "holdout than the better of the current model and the same training without live rows. Live labels that "
        "contradict the curated data (a poisoning client) cost more than this, and the gate refuses the model.",
    )


class TrainingJobSpec(ApiModel):
    dataset: DatasetSpec
    model: ModelSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec
    promote: PromoteSpec | None = None
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="Trainer image; the operator's default if unset."
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="The trainer container's resources. Unset: requests cpu 1 and memory 1Gi, limits cpu 2 and "
        "memory 4Gi.",
    )
    backoff_limit: int = Field(default=1, ge=0, le=10)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    storage: StorageSpec | None = None
    pod: PodOptions | None = Field(default=None, description="Where and how the trainer's pod runs.")

    @model_validator(mode="after")
    def _metric_fits_algorithm(self) -> TrainingJobSpec:
        metric = self.evaluation.metric
        if metric is not None and metric.task is not self.model.algorithm.task:
            raise ValueError(
                f"metric {metric.value} is for {metric.task.value} but algorithm "
                f"{self.model.algorithm.value} is a {self.model.algorithm.task.value} algorithm"
            )
        return self

    @property
    def metric(self) -> Metric:
        return self.evaluation.metric or DEFAULT_METRIC[self.model.algorithm.task]


class ArtifactStatus(ApiModel):
    uri: str
    version: str
    metrics: dict[str, str] = Field(default_factory=dict, description="Holdout metrics, as decimal strings.")


class GateCheck(ApiModel):
    """One part of the promotion decision: the rows that graded it and each model's score on them."""

    holdout: Literal["live", "curated"] = Field(
        description="live: held-out labelled live traffic (whole requests); curated: the dataset's own holdout."
    )
    rows: int
    candidate_score: str
    current_score: str | None = None
    baseline_score: str | None = Field(
        default=None, description="The same training on the curated rows alone (the regression check, with live rows)."
    )
    limit: str = Field(description="minImprovement (the improvement check) or maxRegression (the regression check).")
    passed: bool


class PromotionStatus(ApiModel):
    alias: Name
    outcome: Literal["Promoted", "Rejected"]
    metric: str
    candidate_score: str = Field(description="The new model's score on the rows that graded the improvement.")
    current_score: str | None = None
    previous_version: str | None = None
    generation: int | None = Field(
        default=None, ge=0, description="Promoted: the alias record's generation after the move (each move adds one)."
    )
    message: str = ""
    improvement: GateCheck | None = Field(default=None, description="Does it beat the current model?")
    regression: GateCheck | None = Field(default=None, description="Does it keep its score on the curated holdout?")


class SourceRows(ApiModel):
    name: str = Field(max_length=253, description="The labeller that gave the rows' labels.")
    rows: int = Field(ge=0)


class LiveRows(ApiModel):
    """The labelled live traffic a run read (dataset.feedback): how much, from whom, and how much of it lay
    outside the curated data's support."""

    model: str
    rows: int = Field(ge=0, description="Rows trained on or held out to grade the improvement.")
    predictions: int = Field(ge=0, description="Logged predictions read.")
    unlabelled: int = Field(ge=0, description="Of those, without a label from a named labeller.")
    dropped: dict[str, int] = Field(default_factory=dict, description="Records left out, by reason.")
    anonymous_labels: int = Field(default=0, ge=0, description="Labels no labeller gave: never trained on.")
    sources: list[SourceRows] = Field(default_factory=list, max_length=32, description="Rows by labeller.")
    outside_support: int = Field(default=0, ge=0, description="Rows read outside the curated data's support.")
    outside_support_share: str = Field(default="0", description="Their share of the rows read.")
    left_out: int = Field(default=0, ge=0, description="Of those, left out: not corroborated (outsideSupport).")


class ValidationCheck(ApiModel):
    """One check of the dataset: its verdict and what it found, in counts and the names the spec or the
    current model gave (never the file's content)."""

    check: str
    passed: bool
    message: str = Field(default="", max_length=1024)


class TrainingJobStatus(ApiModel):
    observed_generation: int | None = None
    conditions: Conditions
    job_name: ObjectName | None = None
    start_time: Time | None = None
    completion_time: Time | None = None
    artifact: ArtifactStatus | None = None
    promotion: PromotionStatus | None = None
    validation: list[ValidationCheck] | None = Field(
        default=None, max_length=32, description="The dataset's checks before training (the Validation stage)."
    )
    feedback: LiveRows | None = Field(default=None, description="The labelled live traffic the run read.")
