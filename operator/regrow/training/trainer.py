"""One training run, from a TrainingJob spec to a published, gated model version."""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError  # no public name (1.2+)

from regrow.api.common import parse_decimal, parse_duration
from regrow.api.trainingjob import (
    GateCheck,
    LiveRows,
    Metric,
    PromotionStatus,
    SourceRows,
    Task,
    TrainingJobSpec,
    ValidationCheck,
)
from regrow.clock import now
from regrow.contracts import TrainerReport
from regrow.drift.profile import PREDICTION, Profile, fit_categories, fit_columns, fit_profile, prediction_profile
from regrow.inference import INPUT_NAME, OnnxModel, Prediction
from regrow.storage import NotFound, Store, read_uri
from regrow.storage.registry import MODEL, PROFILE, AliasMoved, Registry
from regrow.tabular import NotCategorical, canonical
from regrow.training.estimators import ParamError, build_pipeline
from regrow.training.feedback import Feedback, label_kind, labelled_rows, plain
from regrow.training.validation import Contract, Table, columns_named, label_shares, validate

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-4
REGRESSION_TOLERANCE = 1e-4  # relative, and absolute near zero
UNSEEN = "<a category never seen in training>"  # what the parity check asks a categorical column
PROBE_ROWS = 5  # rows the parity check repeats with each categorical column unseen, and missing


class TrainingError(Exception):
    """A run that cannot succeed with this spec or data; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str, validation: list[ValidationCheck] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.validation = validation  # the dataset's checks, when they were what failed

    def report(self) -> TrainerReport:
        return TrainerReport(succeeded=False, reason=self.reason, message=str(self), validation=self.validation)


@dataclass(frozen=True)
class Dataset:
    """The features (a float matrix, or with categorical columns an object table: canonical categories beside
    floats), the labels, and what they came from."""

    x: npt.NDArray[Any]
    y: npt.NDArray[Any]
    features: list[str]
    digest: str
    columns: list[str]  # all of the file's
    categorical: list[str] = field(default_factory=list)
    max_categories: int = 20

    @property
    def numeric(self) -> list[str]:
        return [f for f in self.features if f not in self.categorical]

    def kept(self, x: npt.NDArray[Any]) -> dict[str, list[str]]:
        """Each categorical column's categories kept from the rows ``x`` (those trained on), in order."""
        return {name: list(fit_categories(x[:, self.features.index(name)], name, self.max_categories).categories)
                for name in self.categorical}  # fmt: skip

    def served(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Rows as the served model sees them: every number rounded to float32 (categories as they are)."""
        if not self.categorical:
            return x.astype(np.float32).astype(np.float64)
        out = x.copy()
        numbers = [self.features.index(name) for name in self.numeric]
        out[:, numbers] = x[:, numbers].astype(np.float32).astype(np.float64)
        return out

    def outside(self, x: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Which rows of ``x`` lie outside the dataset's support, where its holdout cannot check what a model
        learns: a number beyond its feature's range (as the served model reads numbers, float32), or a category
        none of its rows has. A missing value is inside (it is imputed as in training)."""
        out = np.zeros(len(x), dtype=bool)
        for i, name in enumerate(self.features):
            if name in self.categorical:
                seen = set(self.x[:, i]) | {""}
                out |= np.array([value not in seen for value in x[:, i]], dtype=bool)
                continue
            curated, live = self.x[:, i].astype(np.float32), x[:, i].astype(np.float32)
            if np.isnan(curated).all():
                continue
            low, high = np.nanmin(curated), np.nanmax(curated)
            with np.errstate(invalid="ignore"):
                out |= (live < low) | (live > high)
        return out

    def frame(self, x: npt.NDArray[Any]) -> Any:
        """Rows as scikit-learn is given them: the float matrix, or a frame with the columns by name."""
        if not self.categorical:
            return x
        frame = pd.DataFrame(x, columns=self.features)
        return frame.astype(dict.fromkeys(self.numeric, np.float64))


@dataclass(frozen=True)
class Holdout:
    """Rows that grade models: the curated dataset's holdout, or held-out labelled live traffic."""

    name: str  # curated | live
    x: npt.NDArray[np.float64]
    y: npt.NDArray[Any]


@dataclass(frozen=True)
class Check:
    """One part of the gate: which rows graded it, each model's score, the limit, the verdict."""

    holdout: str
    rows: int
    candidate: float
    current: float
    limit: Decimal
    passed: bool
    baseline: float | None = None

    def status(self) -> GateCheck:
        return GateCheck(
            holdout=self.holdout,
            rows=self.rows,
            candidate_score=_fmt(self.candidate),
            current_score=_fmt(self.current),
            baseline_score=None if self.baseline is None else _fmt(self.baseline),
            limit=str(self.limit),
            passed=self.passed,
        )


@dataclass(frozen=True)
class Gate:
    alias: str
    outcome: str  # Promoted | Rejected
    candidate_score: float
    current_score: float | None
    previous_version: str | None
    message: str
    improvement: Check | None = None
    regression: Check | None = None
    generation: int | None = None  # Promoted: the alias record's generation after the move

    def status(self, metric: str) -> PromotionStatus:
        return PromotionStatus(
            alias=self.alias,
            outcome=self.outcome,
            metric=metric,
            candidate_score=_fmt(self.candidate_score),
            current_score=None if self.current_score is None else _fmt(self.current_score),
            previous_version=self.previous_version,
            generation=self.generation,
            message=self.message,
            improvement=None if self.improvement is None else self.improvement.status(),
            regression=None if self.regression is None else self.regression.status(),
        )


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True)
class RunResult:
    model: str
    version: str
    uri: str
    created: bool
    metric: str
    metrics: dict[str, float]
    parity_error: float
    train_seconds: float
    gate: Gate | None = None
    validation: list[ValidationCheck] = field(default_factory=list)
    feedback: LiveRows | None = None  # the labelled live traffic read

    def report(self) -> TrainerReport:
        """The run as the operator reads it (termination message and run record)."""
        return TrainerReport(
            succeeded=True,
            model=self.model,
            version=self.version,
            uri=self.uri,
            metric=self.metric,
            metrics={k: f"{v:.6g}" for k, v in self.metrics.items()},
            parity_error=f"{self.parity_error:.3g}",
            train_seconds=f"{self.train_seconds:.3f}",
            promotion=None if self.gate is None else self.gate.status(self.metric),
            validation=self.validation or None,
            feedback=self.feedback,
        )


def load_dataset(spec: TrainingJobSpec, raw: bytes) -> Dataset:
    """The dataset's features and labelled target. Errors name what the spec asked for and counts, never
    what the file holds (its header, cells or bytes)."""
    fmt = spec.dataset.format
    try:
        frame = pd.read_parquet(io.BytesIO(raw)) if fmt == "parquet" else pd.read_csv(io.BytesIO(raw))
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors quote the data
        raise TrainingError(
            "InvalidDataset", f"the dataset is not a readable {fmt} file ({type(error).__name__})"
        ) from None
    frame.columns = [str(c) for c in frame.columns]
    target = spec.dataset.target
    if target not in frame.columns:
        raise TrainingError(
            "InvalidDataset", f"target column {target!r} is not among the dataset's {len(frame.columns)} columns"
        )
    if PREDICTION in frame.columns or target == PREDICTION:
        raise TrainingError(
            "InvalidDataset", f"{PREDICTION} is reserved for the model's predictions: rename the column"
        )
    features = spec.dataset.features or [c for c in frame.columns if c != target]
    declared = set(spec.dataset.categorical or []) | set(spec.dataset.numeric or [])
    missing = [f for f in features if f not in frame.columns] + sorted(declared - set(features))
    if missing:
        raise TrainingError("InvalidDataset", f"feature columns not in the dataset: {missing}")
    categorical = _categorical(spec, frame, features)
    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise TrainingError("InvalidDataset", f"need at least 10 labelled rows, found {len(frame)}")
    y = frame[target].to_numpy()
    if spec.model.algorithm.task is Task.REGRESSION and not pd.api.types.is_numeric_dtype(frame[target]):
        raise TrainingError("InvalidDataset", f"target {target!r} must be numeric for regression")
    digest, columns = hashlib.sha256(raw).hexdigest(), list(frame.columns)
    if not categorical:
        return Dataset(frame[features].to_numpy(dtype=np.float64), y, features, digest, columns)
    x = np.empty((len(frame), len(features)), dtype=object)
    for j, name in enumerate(features):
        values = frame[name].to_numpy(dtype=object, na_value=None)
        try:
            x[:, j] = canonical(values) if name in categorical else np.asarray(values, dtype=np.float64)
        except (NotCategorical, TypeError) as error:
            named = columns_named([name], columns, declared | set(spec.dataset.features or []))
            why = f" ({error})" if isinstance(error, NotCategorical) else ""  # what, never the value
            raise TrainingError("InvalidDataset", f"column {named} holds values that are not categories{why}") from None
    return Dataset(x, y, features, digest, columns, categorical, spec.dataset.max_categories)


def _categorical(spec: TrainingJobSpec, frame: pd.DataFrame, features: list[str]) -> list[str]:
    """The categorical feature columns: those the spec names, and those of strings, booleans or pandas
    categories the spec does not call numeric (which must then parse as numbers)."""
    named, numeric = set(spec.dataset.categorical or []), set(spec.dataset.numeric or [])
    known = named | numeric | set(spec.dataset.features or [])
    out = []
    for name in features:
        column = frame[name]
        textual = pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column)
        if name in named or (textual and name not in numeric):
            out.append(name)
        elif textual:  # called numeric, but not numbers as read
            try:
                frame[name] = pd.to_numeric(column.astype(object).where(column.notna(), None))
            except (ValueError, TypeError):
                named_column = columns_named([name], list(frame.columns), known)
                raise TrainingError("InvalidDataset", f"column {named_column} is not numeric") from None
    return out


def split(spec: TrainingJobSpec, data: Dataset) -> tuple[Any, Any, Any, Any]:
    classification = spec.model.algorithm.task is Task.CLASSIFICATION
    stratify = None
    if classification:
        _, counts = np.unique(data.y, return_counts=True)
        if len(counts) < 2:
            raise TrainingError("InvalidDataset", "classification needs at least two classes in the target")
        stratify = data.y if counts.min() >= 2 else None
    return train_test_split(  # type: ignore[no-any-return]
        data.x, data.y, test_size=spec.evaluation.holdout_percent / 100, random_state=spec.evaluation.seed,
        stratify=stratify,
    )  # fmt: skip


def export_onnx(pipeline: Pipeline, data: Dataset) -> bytes:
    """The ONNX graph: one float input [n, features], or with categorical columns one input [n, 1] per
    column, named after it (strings for a categorical one)."""
    options = {id(pipeline.steps[-1][1]): {"zipmap": False}} if hasattr(pipeline, "predict_proba") else None
    column = {True: StringTensorType([None, 1]), False: FloatTensorType([None, 1])}
    inputs = (
        [(f, column[f in data.categorical]) for f in data.features]
        if data.categorical
        else [(INPUT_NAME, FloatTensorType([None, len(data.features)]))]
    )
    # A fixed graph name (skl2onnx draws a random one) keeps the bytes, and so the version, reproducible.
    onnx_model = convert_sklearn(pipeline, initial_types=inputs, options=options, name="regrow")
    return onnx_model.SerializeToString()  # type: ignore[no-any-return]


def probes(data: Dataset, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``x``, then its first rows again with each categorical column a category never seen in training, and
    missing: what the parity check asks beside the holdout."""
    head = x[:PROBE_ROWS]
    extra = []
    for name in data.categorical:
        for value in (UNSEEN, ""):
            rows = head.copy()
            rows[:, data.features.index(name)] = value
            extra.append(rows)
    return np.concatenate([x, *extra]) if extra else x


def parity_error(pipeline: Pipeline, model: OnnxModel, x: npt.NDArray[Any], task: Task, data: Dataset) -> float:
    """The largest disagreement between scikit-learn and onnxruntime on ``x`` (and for categorical columns on
    unseen and missing categories too); raises on a label mismatch."""
    x = data.served(probes(data, x))
    got = model.predict(x)
    rows = data.frame(x)
    if task is Task.REGRESSION:
        want = pipeline.predict(rows)
        error = np.abs(got.outputs.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
        worst = float(error.max(initial=0.0))
        if worst > REGRESSION_TOLERANCE:
            raise TrainingError("ParityFailed", f"onnxruntime and scikit-learn differ by {worst:.3g} (relative)")
        return worst
    want_labels = pipeline.predict(rows)
    mismatches = int(np.sum(got.outputs != want_labels))
    if mismatches:
        raise TrainingError("ParityFailed", f"onnxruntime and scikit-learn disagree on {mismatches} labels")
    assert got.probabilities is not None
    worst = float(np.abs(got.probabilities - pipeline.predict_proba(rows)).max(initial=0.0))
    if worst > PROBABILITY_TOLERANCE:
        raise TrainingError("ParityFailed", f"onnxruntime and scikit-learn probabilities differ by {worst:.3g}")
    return worst


def score(task: Task, y: npt.NDArray[Any], prediction: Prediction, classes: list[Any]) -> dict[str, float]:
    if task is Task.REGRESSION:
        values = prediction.outputs.astype(np.float64)
        return {
            Metric.RMSE.value: float(np.sqrt(skm.mean_squared_error(y, values))),
            Metric.R2.value: float(skm.r2_score(y, values)),
        }
    out = {
        Metric.ACCURACY.value: float(skm.accuracy_score(y, prediction.outputs)),
        Metric.F1.value: float(skm.f1_score(y, prediction.outputs, average="macro")),
    }
    assert prediction.probabilities is not None
    present = set(np.unique(y))
    if len(present) >= 2 and present <= set(classes):
        proba = prediction.probabilities
        if len(classes) == 2:
            out[Metric.ROC_AUC.value] = float(skm.roc_auc_score(y, proba[:, 1], labels=classes))
        else:
            out[Metric.ROC_AUC.value] = float(
                skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
            )
    return out


def improvement(metric: Metric, candidate: float, current: float) -> Decimal:
    delta = candidate - current if metric.higher_is_better else current - candidate
    return Decimal(repr(delta))


Predict = Callable[[npt.NDArray[np.float64]], Prediction]


@dataclass(frozen=True)
class Graders:
    """What the gate scores with: the holdouts, and the models it compares."""

    curated: Holdout
    live: Holdout | None  # None: no labelled live rows were held out
    candidate: dict[str, dict[str, float]]  # the new model's metrics on each holdout, by its name
    baseline: Predict | None  # the same training without live rows; None when none were added
    classes: list[Any]


def promote(spec: TrainingJobSpec, registry: Registry, version: str, decision: Gate | None) -> Gate | None:
    """Move the alias as the gate decided, if it still points where it did when the gate compared: another
    run may have promoted since, and this model was never compared with that one (then: Rejected, saying so)."""
    if decision is None or decision.outcome != "Promoted":
        return decision
    try:
        moved = registry.promote(spec.output.model_name, decision.alias, version, decision.previous_version)
    except AliasMoved as lost:
        return replace(decision, outcome="Rejected", message=f"not promoted: {lost}")
    return replace(decision, generation=moved.generation)


def gate(spec: TrainingJobSpec, registry: Registry, version: str, data: Dataset, graders: Graders) -> Gate | None:
    """Decide whether the new model (``version``) replaces the alias's current one: (a) it must beat it by
    ``minImprovement`` on the live holdout (the curated one without live rows), and (b) lose no more than
    ``maxRegression`` on the curated holdout, against the better of the current model and the baseline.
    Live labels grade (a) only; (b) is graded by rows no client can label."""
    if spec.promote is None:
        return None
    alias, model_name, metric, task = spec.promote.alias, spec.output.model_name, spec.metric, spec.model.algorithm.task
    graded = graders.live or graders.curated
    candidate = graders.candidate[graded.name].get(metric.value)
    current_version = registry.resolve(model_name, alias)
    if current_version is None:
        return Gate(alias, "Promoted", _nan(candidate), None, None, f"{alias} did not exist")
    if current_version == version:  # the same content trained again: nothing to compare, nothing changes
        return Gate(alias, "Promoted", _nan(candidate), candidate, version, "the same model was trained again")
    current_meta = registry.metadata(model_name, current_version)
    inputs = (current_meta.get("features"), current_meta.get("categorical", []))
    if inputs != (data.features, data.categorical) or current_meta.get("task") != task.value:
        return Gate(
            alias, "Rejected", _nan(candidate), None, current_version,
            f"{alias} ({current_version}) takes other features or task; it cannot be scored on this holdout",
        )  # fmt: skip
    champion = OnnxModel(registry.read(model_name, current_version, MODEL)).predict
    holdouts = {holdout.name: holdout for holdout in (graded, graders.curated)}  # one, without live rows
    champion_on = {
        name: _metric(task, metric, h, champion, current_meta.get("classes", [])) for name, h in holdouts.items()
    }
    current = champion_on[graded.name]
    if candidate is None or current is None:
        return Gate(alias, "Rejected", _nan(candidate), current, current_version,
                    f"{metric.value} is undefined on the {graded.name} holdout")  # fmt: skip
    needed = parse_decimal(spec.promote.min_improvement)
    gain = improvement(metric, candidate, current)
    better = Check(graded.name, len(graded.y), candidate, current, needed, gain >= needed)
    kept, best = _regression(spec, graders, champion_on[graders.curated.name])
    verdict = "Promoted" if better.passed and kept.passed else "Rejected"
    versus = (
        current_version if kept.baseline is None else f"the better of {current_version} and training without live rows"
    )
    message = (
        f"{metric.value} on the {graded.name} holdout ({better.rows} rows) {candidate:.6g} vs {current:.6g} for "
        f"{current_version}: improvement {gain:.6g} {'>=' if better.passed else '<'} required {needed}; on the "
        f"curated holdout ({kept.rows} rows) {kept.candidate:.6g} vs {best:.6g} for {versus}: "
        f"{'within' if kept.passed else 'beyond'} the allowed regression {kept.limit}"
    )
    return Gate(alias, verdict, candidate, current, current_version, message, better, kept)


def _nan(score: float | None) -> float:
    return math.nan if score is None else score


def _metric(task: Task, metric: Metric, holdout: Holdout, predict: Predict, classes: list[Any]) -> float | None:
    return score(task, holdout.y, predict(holdout.x), classes).get(metric.value)


def _regression(spec: TrainingJobSpec, graders: Graders, current: float | None) -> tuple[Check, float]:
    """(b): the candidate's score on the curated holdout against the best of the champion's (``current``) and
    the baseline's (returned beside the check)."""
    assert spec.promote is not None
    task, metric, curated = spec.model.algorithm.task, spec.metric, graders.curated
    candidate = graders.candidate[curated.name].get(metric.value)
    baseline = None if graders.baseline is None else _metric(task, metric, curated, graders.baseline, graders.classes)
    allowed = parse_decimal(spec.promote.max_regression)
    if candidate is None or current is None:
        undefined = Check(curated.name, len(curated.y), _nan(candidate), _nan(current), allowed, False)
        return undefined, math.nan
    references = [current] if baseline is None else [current, baseline]
    best = max(references) if metric.higher_is_better else min(references)
    loss = -improvement(metric, candidate, best)
    return Check(curated.name, len(curated.y), candidate, current, allowed, loss <= allowed, baseline), best


def contract(spec: TrainingJobSpec, registry: Registry) -> Contract | None:
    """What the alias's current model was trained on, the dataset's contract; None without promote or alias."""
    if spec.promote is None:
        return None
    model = spec.output.model_name
    version = registry.resolve(model, spec.promote.alias)
    if version is None:
        return None
    meta = registry.metadata(model, version)
    profile = Profile.from_json(registry.read(model, version, PROFILE))
    return Contract(version, list(meta.get("features", [])), str(meta.get("task")), list(meta.get("classes", [])),
                    meta.get("labelShares"), profile)  # fmt: skip


@dataclass(frozen=True)
class Live:
    """The labelled live rows a run reads, what it read, and how many lie outside the curated support."""

    rows: Feedback
    read: LiveRows

    @property
    def outside_support(self) -> int:
        return self.read.outside_support - self.read.left_out


MAX_SOURCES = 16  # labellers named in a run's report, the most rows first


def live_rows(spec: TrainingJobSpec, data: Dataset, store: Store) -> Live | None:
    """The labelled live traffic ``spec.dataset.feedback`` asks for, less the rows outside the curated data's
    support that ``outsideSupport: Corroborated`` leaves out, and what was read (the run's record)."""
    wanted = spec.dataset.feedback
    if wanted is None:
        return None
    model = wanted.model_name or spec.output.model_name
    # A regressor's labels are numbers; a classifier's of the kind the dataset's own are (str, number or bool).
    regression = spec.model.algorithm.task is Task.REGRESSION
    kinds = {"number"} if regression else {label_kind(v) for v in data.y} - {None}
    since = time.time() - parse_duration(wanted.window)
    read = labelled_rows(store, model, data.features, set(data.categorical), wanted.max_rows,
                         lambda label: label_kind(label) in kinds, since)  # fmt: skip
    outside = data.outside(read.x)
    kept = ~outside | read.corroborated if wanted.outside_support == "Corroborated" else np.ones(len(outside), bool)
    live = read.only(kept)
    by_source = collections.Counter(live.sources.tolist()).most_common(MAX_SOURCES)
    record = LiveRows(
        model=model, rows=len(live.y), predictions=read.predictions, unlabelled=read.unlabelled,
        dropped=read.dropped, anonymous_labels=read.anonymous,
        sources=[SourceRows(name=name[:63], rows=rows) for name, rows in by_source],
        outside_support=int(outside.sum()), outside_support_share=_fmt(outside.mean() if len(outside) else 0.0),
        left_out=int((~kept).sum()),
    )  # fmt: skip
    log.info("Read %d labelled rows of %s's live traffic (%d predictions logged, %d without a label, %d anonymous "
             "labels left out; %d rows outside the curated support, %d of them left out)", len(live.y), model,
             read.predictions, read.unlabelled, read.anonymous, record.outside_support, record.left_out)  # fmt: skip
    return Live(live, record)


def awaiting_person(spec: TrainingJobSpec, verdict: Gate | None, live: Live | None, version: str) -> Gate | None:
    """With ``outsideSupport: Approved``, a promotion that live rows outside the curated support helped earn
    waits for a person: the version is published, the alias stays, and the message says how to move it."""
    wanted = spec.dataset.feedback
    if verdict is None or verdict.outcome != "Promoted" or live is None or not live.outside_support:
        return verdict
    if wanted is None or wanted.outside_support != "Approved" or verdict.previous_version == version:
        return verdict
    model, alias, before = spec.output.model_name, verdict.alias, verdict.previous_version
    how = (f" (regrow move-alias --registry {spec.output.registry} --model {model} --alias {alias} --from {before} "
           f"--to {version})" if before else "")  # fmt: skip
    return replace(verdict, outcome="Rejected", message=(
        f"the gate passed ({verdict.message}), but {live.outside_support} labelled live rows lie outside the "
        f"curated data's support, and outsideSupport is Approved: a person promotes it{how}"
    ))  # fmt: skip


def split_live(spec: TrainingJobSpec, live: Feedback | None) -> tuple[npt.NDArray[np.bool_], int]:
    """Which live rows are held out: whole requests (prediction ids), ``holdoutPercent`` of them, seeded;
    none with fewer than two requests. Returns the mask and the number of requests held out."""
    if live is None or not len(live.y):
        return np.zeros(0, dtype=bool), 0
    ids = np.unique(live.groups)
    if len(ids) < 2:
        return np.zeros(len(live.y), dtype=bool), 0
    count = max(1, round(len(ids) * spec.evaluation.holdout_percent / 100))
    held = np.random.default_rng(spec.evaluation.seed).choice(ids, size=count, replace=False)
    return np.isin(live.groups, held), count


def _targets(task: Task, *parts: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Labels joined: numbers for regression; for classification, as they are (no truncation to a width)."""
    if task is Task.REGRESSION:
        return np.concatenate([p.astype(np.float64) for p in parts])
    return np.concatenate([p.astype(object) for p in parts])


def _fit(spec: TrainingJobSpec, data: Dataset, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> Pipeline:
    try:
        pipeline = build_pipeline(spec.model, spec.evaluation.seed, data.kept(x), data.numeric)
        pipeline.fit(data.frame(x), y)
    except (ParamError, InvalidParameterError) as error:  # about the spec's params alone: safe to quote
        raise TrainingError("InvalidParams", str(error)) from None
    except (ValueError, TypeError) as error:  # scikit-learn's messages may quote the data (labels, values)
        log.error("Fitting %s failed: %s", spec.model.algorithm.value, error)
        raise TrainingError(
            "InvalidParams",
            f"scikit-learn could not fit {spec.model.algorithm.value} with these params on this dataset "
            f"({type(error).__name__}; the training pod's log has the details)",
        ) from None
    return pipeline


def _sklearn(pipeline: Pipeline, task: Task, data: Dataset) -> Predict:
    def predict(x: npt.NDArray[Any]) -> Prediction:
        rows = data.frame(data.served(x))  # what the served model sees
        proba = None if task is Task.REGRESSION else pipeline.predict_proba(rows).astype(np.float32)
        return Prediction(np.asarray(pipeline.predict(rows)), proba)

    return predict


def train(spec: TrainingJobSpec, raw_dataset: bytes, registry: Registry, run: dict[str, str]) -> RunResult:
    """Train, check, profile, publish; move the alias if the gate allows. ``run`` names the TrainingJob."""
    data = load_dataset(spec, raw_dataset)
    checks = validate(spec, Table(data.columns, data.features, data.x, data.y), contract(spec, registry))
    failed = [check for check in checks if not check.passed]
    if failed:
        summary = "; ".join(f"{check.check}: {check.message}" for check in failed)
        error = TrainingError(
            "DataValidationFailed", f"{len(failed)} of {len(checks)} checks failed: {summary}", checks
        )
        registry.write_run(spec.output.model_name, run.get("uid") or data.digest[:16], {**error.report().to_wire(),
                                                                                        "run": run})  # fmt: skip
        raise error
    record = live_rows(spec, data, registry.store)
    live = None if record is None else record.rows
    x_train, x_test, y_train, y_test = split(spec, data)
    held, held_requests = split_live(spec, live)
    task = spec.model.algorithm.task
    fit_x, fit_y = x_train, y_train
    live_holdout = None
    if live is not None and len(live.y):
        fit_x, fit_y = np.vstack([x_train, live.x[~held]]), _targets(task, y_train, live.y[~held])
        if held.any():
            live_holdout = Holdout("live", live.x[held], _targets(task, live.y[held]))
    started = time.perf_counter()
    pipeline = _fit(spec, data, fit_x, fit_y)
    train_seconds = time.perf_counter() - started
    onnx_bytes = export_onnx(pipeline, data)
    model = OnnxModel(onnx_bytes)
    checked = x_test if live_holdout is None else np.vstack([x_test, live_holdout.x])
    worst = parity_error(pipeline, model, checked, task, data)
    classes = [plain(c) for c in getattr(pipeline, "classes_", [])]
    predicted = model.predict(x_test)
    metrics = score(task, y_test, predicted, classes)
    metric = spec.metric
    if metric.value not in metrics:
        raise TrainingError("InvalidDataset", f"{metric.value} is undefined on this holdout (one class only?)")
    live_metrics = {} if live_holdout is None else score(task, live_holdout.y, model.predict(live_holdout.x), classes)
    # The inputs' reference from the rows trained on; the predictions' from the curated holdout.
    inputs = (
        fit_columns(list(fit_x.T), data.features, set(data.categorical), data.max_categories)
        if data.categorical
        else fit_profile(fit_x, data.features)
    )
    profile = replace(inputs, prediction=prediction_profile(predicted.outputs, classes))
    digest = data.digest if live is None else hashlib.sha256(f"{data.digest}+{live.digest}".encode()).hexdigest()
    metadata = {
        "model": spec.output.model_name,
        "task": task.value,
        "algorithm": spec.model.algorithm.value,
        "params": dict(spec.model.params),
        "features": data.features,
        **({"categorical": data.categorical, "maxCategories": data.max_categories} if data.categorical else {}),
        "target": spec.dataset.target,
        "classes": classes,
        **({"labelShares": label_shares(data.y)} if task is Task.CLASSIFICATION else {}),
        "validation": [check.to_wire() for check in checks],
        "metric": metric.value,
        "metrics": metrics,
        "dataset": {
            "uri": spec.dataset.uri,
            "sha256": digest,
            "rows": len(data.y) + (len(live.y) if live is not None else 0),
            **({"feedback": record.read.to_wire()} if record is not None else {}),
        },
        "holdout": {  # which rows graded what: metrics on the curated rows, liveMetrics on the held-out live ones
            "percent": spec.evaluation.holdout_percent,
            "seed": spec.evaluation.seed,
            "rows": len(y_test),
            "liveRows": 0 if live_holdout is None else len(live_holdout.y),
            "liveRequests": held_requests,
            **({"liveMetrics": live_metrics} if live_metrics else {}),
        },
        "parityError": worst,
        "created": now(),
        "trainingJob": run,
        "frameworks": {p: package_version(p) for p in ("scikit-learn", "skl2onnx", "onnxruntime")},
    }
    published = registry.publish(spec.output.model_name, onnx_bytes, profile.to_json(), metadata)
    baseline = None
    if spec.promote is not None and len(fit_y) > len(y_train):  # live rows were trained on: what without them?
        baseline = _sklearn(_fit(spec, data, x_train, y_train), task, data)
    scored = {"curated": metrics, **({"live": live_metrics} if live_holdout is not None else {})}
    graders = Graders(Holdout("curated", x_test, y_test), live_holdout, scored, baseline, classes)
    verdict = gate(spec, registry, published.version, data, graders)
    decision = promote(spec, registry, published.version, awaiting_person(spec, verdict, record, published.version))
    result = RunResult(
        spec.output.model_name, published.version, published.uri, published.created, metric.value, metrics,
        worst, train_seconds, decision, checks, None if record is None else record.read,
    )  # fmt: skip
    registry.write_run(
        spec.output.model_name, run.get("uid") or published.version, {**result.report().to_wire(), "run": run}
    )
    log.info(
        "Published %s version %s (%s=%.4g)",
        spec.output.model_name,
        published.version,
        metric.value,
        metrics[metric.value],
    )
    return result


def read_dataset(spec: TrainingJobSpec) -> bytes:
    storage = spec.storage
    uri = spec.dataset.uri
    if uri.startswith("file://") and storage is not None and storage.volume_claim_name:
        # In a pod, within the mounted claim even after links: a link on the volume must not lead out of it.
        mount = Path(storage.mount_path).resolve()
        if not Path(uri[len("file://") :]).resolve().is_relative_to(mount):
            raise TrainingError("InvalidDataset", f"{uri} leads outside storage.mountPath ({mount})")
    try:
        return read_uri(
            spec.dataset.uri,
            endpoint_url=storage.endpoint_url if storage else None,
            region=storage.region if storage else None,
        )
    except NotFound:
        raise TrainingError("DatasetNotFound", f"no dataset at {spec.dataset.uri}") from None
