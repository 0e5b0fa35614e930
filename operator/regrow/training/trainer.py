"""One training run, from a TrainingJob spec to a published, gated model version."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError  # no public name (1.2+)

from regrow.api.common import parse_decimal
from regrow.api.trainingjob import Metric, Task, TrainingJobSpec
from regrow.clock import now
from regrow.drift.profile import fit_profile
from regrow.inference import INPUT_NAME, OnnxModel, Prediction
from regrow.storage import NotFound, Store, read_uri
from regrow.storage.registry import MODEL, Registry
from regrow.training.estimators import ParamError, build_pipeline
from regrow.training.feedback import label_kind, labelled_rows

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-4
REGRESSION_TOLERANCE = 1e-4  # relative, and absolute near zero


class TrainingError(Exception):
    """A run that cannot succeed with this spec or data; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Dataset:
    x: npt.NDArray[np.float64]
    y: npt.NDArray[Any]
    features: list[str]
    digest: str


@dataclass(frozen=True)
class Gate:
    alias: str
    outcome: str  # Promoted | Rejected
    candidate_score: float
    current_score: float | None
    previous_version: str | None
    message: str


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

    def summary(self) -> dict[str, Any]:
        """The run as the operator reads it (termination message and run record)."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "uri": self.uri,
            "metric": self.metric,
            "metrics": {k: f"{v:.6g}" for k, v in self.metrics.items()},
            "parityError": f"{self.parity_error:.3g}",
            "trainSeconds": f"{self.train_seconds:.3f}",
        }
        if self.gate is not None:
            out["promotion"] = {
                "alias": self.gate.alias,
                "outcome": self.gate.outcome,
                "metric": self.metric,
                "candidateScore": f"{self.gate.candidate_score:.6g}",
                **({"currentScore": f"{self.gate.current_score:.6g}"} if self.gate.current_score is not None else {}),
                **({"previousVersion": self.gate.previous_version} if self.gate.previous_version else {}),
                "message": self.gate.message,
            }
        return out


def _columns(spec: TrainingJobSpec, frame: pd.DataFrame, bad: list[str]) -> str:
    """Columns for a message: by name when the spec named them, else by position. A column the spec did not
    name is the file's content, which a message must not echo (the URI may reach a file it should not)."""
    if spec.dataset.features is not None:
        return ", ".join(repr(name) for name in bad)
    positions = [str(list(frame.columns).index(name) + 1) for name in bad]
    return f"{len(bad)} column(s): number {', '.join(positions[:20])} of the file's {len(frame.columns)}"


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
    features = spec.dataset.features or [c for c in frame.columns if c != target]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise TrainingError("InvalidDataset", f"feature columns not in the dataset: {missing}")
    non_numeric = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]
    if non_numeric:
        raise TrainingError("InvalidDataset", f"feature columns must be numeric: {_columns(spec, frame, non_numeric)}")
    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise TrainingError("InvalidDataset", f"need at least 10 labelled rows, found {len(frame)}")
    y = frame[target].to_numpy()
    if spec.model.algorithm.task is Task.REGRESSION and not pd.api.types.is_numeric_dtype(frame[target]):
        raise TrainingError("InvalidDataset", f"target {target!r} must be numeric for regression")
    return Dataset(frame[features].to_numpy(dtype=np.float64), y, features, hashlib.sha256(raw).hexdigest())


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


def export_onnx(pipeline: Pipeline, n_features: int) -> bytes:
    options = {id(pipeline.steps[-1][1]): {"zipmap": False}} if hasattr(pipeline, "predict_proba") else None
    # A fixed graph name (skl2onnx draws a random one) keeps the bytes, and so the version, reproducible.
    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options=options,
        name="regrow",
    )
    return onnx_model.SerializeToString()  # type: ignore[no-any-return]


def parity_error(pipeline: Pipeline, model: OnnxModel, x: npt.NDArray[np.float64], task: Task) -> float:
    """The largest disagreement between scikit-learn and onnxruntime on ``x``; raises on a label mismatch."""
    x32 = x.astype(np.float32)
    got = model.predict(x32)
    if task is Task.REGRESSION:
        want = pipeline.predict(x32.astype(np.float64))
        error = np.abs(got.outputs.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
        worst = float(error.max(initial=0.0))
        if worst > REGRESSION_TOLERANCE:
            raise TrainingError("ParityFailed", f"onnxruntime and scikit-learn differ by {worst:.3g} (relative)")
        return worst
    want_labels = pipeline.predict(x32.astype(np.float64))
    mismatches = int(np.sum(got.outputs != want_labels))
    if mismatches:
        raise TrainingError("ParityFailed", f"onnxruntime and scikit-learn disagree on {mismatches} labels")
    assert got.probabilities is not None
    worst = float(np.abs(got.probabilities - pipeline.predict_proba(x32.astype(np.float64))).max(initial=0.0))
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


def gate(
    spec: TrainingJobSpec, registry: Registry, version: str, x: npt.NDArray[np.float64], y: npt.NDArray[Any],
    features: list[str], candidate: float,
) -> Gate | None:  # fmt: skip
    """Decide whether the new model (``version``) replaces the alias's current one, scoring both on the same
    holdout."""
    if spec.promote is None:
        return None
    alias, model_name, metric = spec.promote.alias, spec.output.model_name, spec.metric
    current_version = registry.resolve(model_name, alias)
    if current_version is None:
        return Gate(alias, "Promoted", candidate, None, None, f"{alias} did not exist")
    if current_version == version:  # the same content trained again: nothing to compare, nothing changes
        return Gate(alias, "Promoted", candidate, candidate, version, "the same model was trained again")
    current_meta = registry.metadata(model_name, current_version)
    if current_meta.get("features") != features or current_meta.get("task") != spec.model.algorithm.task.value:
        return Gate(
            alias, "Rejected", candidate, None, current_version,
            f"{alias} ({current_version}) takes other features or task; it cannot be scored on this holdout",
        )  # fmt: skip
    current_model = OnnxModel(registry.read(model_name, current_version, MODEL))
    current = score(spec.model.algorithm.task, y, current_model.predict(x), current_meta.get("classes", []))
    current_score = current.get(metric.value)
    if current_score is None:
        return Gate(alias, "Rejected", candidate, None, current_version, f"{metric.value} undefined on this holdout")
    gain = improvement(metric, candidate, current_score)
    needed = parse_decimal(spec.promote.min_improvement)
    verdict = "Promoted" if gain >= needed else "Rejected"
    message = (
        f"{metric.value} {candidate:.6g} vs {current_score:.6g} for {current_version}: "
        f"improvement {gain:.6g} {'>=' if verdict == 'Promoted' else '<'} required {needed}"
    )
    return Gate(alias, verdict, candidate, current_score, current_version, message)


def with_feedback(spec: TrainingJobSpec, data: Dataset, store: Store) -> tuple[Dataset, dict[str, Any]]:
    """The dataset plus the labelled live traffic ``spec.dataset.feedback`` asks for, and what was added."""
    wanted = spec.dataset.feedback
    if wanted is None:
        return data, {}
    model = wanted.model_name or spec.output.model_name
    kinds: set[str | None]
    if spec.model.algorithm.task is Task.REGRESSION:
        kinds = {"number"}
    else:  # labels of the kind the dataset's own are (str, number or bool), so that they can be compared
        kinds = {label_kind(v.item() if isinstance(v, np.generic) else v) for v in data.y} - {None}
    live = labelled_rows(store, model, len(data.features), wanted.max_rows, lambda label: label_kind(label) in kinds)
    added = {"model": model, "rows": len(live.y), "predictions": live.predictions, "unlabelled": live.unlabelled,
             "dropped": live.dropped}  # fmt: skip
    log.info("Added %d labelled rows of %s's live traffic (%d predictions logged, %d without a label)",
             len(live.y), model, live.predictions, live.unlabelled)  # fmt: skip
    if not len(live.y):
        return data, added
    if spec.model.algorithm.task is Task.REGRESSION:
        try:
            y = np.concatenate([data.y, live.y.astype(np.float64)])
        except (TypeError, ValueError):
            raise TrainingError(
                "InvalidDataset", f"feedback labels of {model} must be numeric for regression"
            ) from None
    else:  # labels as the clients sent them, beside the dataset's (no truncation to its string width)
        y = np.concatenate([data.y.astype(object), live.y])
    digest = hashlib.sha256(f"{data.digest}+{live.digest}".encode()).hexdigest()
    return Dataset(np.vstack([data.x, live.x]), y, data.features, digest), added


def train(spec: TrainingJobSpec, raw_dataset: bytes, registry: Registry, run: dict[str, str]) -> RunResult:
    """Train, check, profile, publish; move the alias if the gate allows. ``run`` names the TrainingJob."""
    data, feedback = with_feedback(spec, load_dataset(spec, raw_dataset), registry.store)
    x_train, x_test, y_train, y_test = split(spec, data)
    task = spec.model.algorithm.task
    started = time.perf_counter()
    try:
        pipeline = build_pipeline(spec.model, spec.evaluation.seed)
        pipeline.fit(x_train, y_train)
    except (ParamError, InvalidParameterError) as error:  # about the spec's params alone: safe to quote
        raise TrainingError("InvalidParams", str(error)) from None
    except (ValueError, TypeError) as error:  # scikit-learn's messages may quote the data (labels, values)
        log.error("Fitting %s failed: %s", spec.model.algorithm.value, error)
        raise TrainingError(
            "InvalidParams",
            f"scikit-learn could not fit {spec.model.algorithm.value} with these params on this dataset "
            f"({type(error).__name__}; the training pod's log has the details)",
        ) from None
    train_seconds = time.perf_counter() - started
    onnx_bytes = export_onnx(pipeline, len(data.features))
    model = OnnxModel(onnx_bytes)
    worst = parity_error(pipeline, model, x_test, task)
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(pipeline, "classes_", [])]
    metrics = score(task, y_test, model.predict(x_test), classes)
    metric = spec.metric
    if metric.value not in metrics:
        raise TrainingError("InvalidDataset", f"{metric.value} is undefined on this holdout (one class only?)")
    profile = fit_profile(x_train, data.features)
    metadata = {
        "model": spec.output.model_name,
        "task": task.value,
        "algorithm": spec.model.algorithm.value,
        "params": dict(spec.model.params),
        "features": data.features,
        "target": spec.dataset.target,
        "classes": classes,
        "metric": metric.value,
        "metrics": metrics,
        "dataset": {
            "uri": spec.dataset.uri,
            "sha256": data.digest,
            "rows": len(data.y),
            **({"feedback": feedback} if feedback else {}),
        },
        "holdout": {
            "percent": spec.evaluation.holdout_percent,
            "seed": spec.evaluation.seed,
            "rows": len(y_test),
        },
        "parityError": worst,
        "created": now(),
        "trainingJob": run,
        "frameworks": {p: package_version(p) for p in ("scikit-learn", "skl2onnx", "onnxruntime")},
    }
    published = registry.publish(spec.output.model_name, onnx_bytes, profile.to_json(), metadata)
    decision = gate(spec, registry, published.version, x_test, y_test, data.features, metrics[metric.value])
    if decision is not None and decision.outcome == "Promoted":
        registry.set_alias(spec.output.model_name, decision.alias, published.version)
    result = RunResult(
        spec.output.model_name, published.version, published.uri, published.created, metric.value, metrics,
        worst, train_seconds, decision,
    )  # fmt: skip
    registry.write_run(spec.output.model_name, run.get("uid") or published.version, {**result.summary(), "run": run})
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
