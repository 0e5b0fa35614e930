"""The trainer, run for real on data sets that ship with scikit-learn, into file:// and S3 registries."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from regrow.api import TrainingJobSpec, parse_spec
from regrow.api.trainingjob import Algorithm, Task
from regrow.contracts import log_key
from regrow.drift.profile import Profile
from regrow.inference import OnnxModel
from regrow.serving.app import log_prediction
from regrow.serving.feedback import Signer
from regrow.serving.predlog import PredictionLog
from regrow.storage import open_store
from regrow.storage.registry import MODEL, Registry
from regrow.training.entrypoint import run
from regrow.training.estimators import build_pipeline
from regrow.training.feedback import labelled_rows
from regrow.training.sample_data import TARGETS, sample_csv
from regrow.training.trainer import Dataset, Gate, TrainingError, export_onnx, parity_error, promote, train


def write_dataset(directory: Path, name: str, fmt: str = "csv") -> Path:
    path = directory / f"{name}.{fmt}"
    if fmt == "parquet":
        pd.read_csv(io.BytesIO(sample_csv(name))).to_parquet(path)
    else:
        path.write_bytes(sample_csv(name))
    return path


def make_spec(data: Path, registry: str, algorithm: str, **extra: Any) -> TrainingJobSpec:
    body: dict[str, Any] = {
        "dataset": {"uri": f"file://{data}", "format": data.suffix[1:], "target": TARGETS[data.stem]},
        "model": {"algorithm": algorithm, "params": extra.pop("params", {})},
        "evaluation": {"holdoutPercent": 25, "seed": 3},
        "output": {"registry": registry, "modelName": extra.pop("model_name", "m")},
        **extra,
    }
    return parse_spec(TrainingJobSpec, body)


CASES = [
    (dataset, algorithm)
    for algorithm in Algorithm
    for dataset in (["diabetes"] if algorithm.task is Task.REGRESSION else ["iris", "breast_cancer", "wine"])
]
FLOORS = {"iris": 0.85, "breast_cancer": 0.9, "wine": 0.85}
DAY = 86400


@pytest.mark.parametrize(("dataset", "algorithm"), CASES, ids=[f"{d}-{a.value}" for d, a in CASES])
def test_every_algorithm_trains_exports_and_agrees_with_onnxruntime(
    tmp_path: Path, dataset: str, algorithm: Algorithm
) -> None:
    data = write_dataset(tmp_path, dataset)
    spec = make_spec(data, f"file://{tmp_path}/registry", algorithm.value)
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    result = train(spec, data.read_bytes(), registry, {"name": "t"})

    assert result.created
    assert result.parity_error <= 1e-4
    if algorithm.task is Task.REGRESSION:
        assert set(result.metrics) == {"rmse", "r2"}
        assert result.metrics["r2"] > 0.2
    else:
        assert set(result.metrics) == {"accuracy", "f1", "rocAuc"}
        assert result.metrics["accuracy"] >= FLOORS[dataset]
    meta = registry.metadata("m", result.version)
    assert meta["algorithm"] == algorithm.value and meta["task"] == algorithm.task.value
    assert meta["features"] == list(pd.read_csv(data).columns[:-1])
    assert meta["metrics"] == result.metrics
    assert meta["holdout"]["rows"] == round(len(pd.read_csv(data)) * 0.25 + 0.49)
    profile = Profile.from_json(registry.read("m", result.version, "profile.json"))
    assert profile.names == meta["features"]
    # The predictions' reference: the new model's outputs on the curated holdout.
    assert profile.prediction is not None and sum(profile.prediction.counts) == meta["holdout"]["rows"]
    assert list(profile.prediction.categories) == [str(c) for c in meta["classes"]]  # none for a regressor
    assert profile.rows == len(pd.read_csv(data)) - meta["holdout"]["rows"]
    model = OnnxModel(registry.read("m", result.version, "model.onnx"))
    assert model.n_features == len(meta["features"])


def test_training_is_deterministic_and_never_overwrites(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, "wine", fmt="parquet")
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    spec = make_spec(data, f"file://{tmp_path}/registry", "randomForest", params={"n_estimators": 20})
    first = train(spec, data.read_bytes(), registry, {"uid": "a"})
    second = train(spec, data.read_bytes(), registry, {"uid": "b"})
    assert first.version == second.version and not second.created
    assert registry.versions("m") == [first.version]
    assert registry.read_run("m", "b")["version"] == first.version


def test_quality_gate_promotes_only_a_better_model(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, "breast_cancer")
    uri = f"file://{tmp_path}/registry"
    registry = Registry(open_store(uri))

    def attempt(params: dict[str, Any], min_improvement: str) -> Any:
        promote = {"alias": "champion", "minImprovement": min_improvement}
        spec = make_spec(data, uri, "logisticRegression", params=params, promote=promote)
        return train(spec, data.read_bytes(), registry, {})

    weak = attempt({"C": "0.0001", "max_iter": 20}, "0")
    assert weak.gate is not None and weak.gate.outcome == "Promoted"
    assert weak.gate.message == "champion did not exist"
    assert registry.resolve("m", "champion") == weak.version

    strong = attempt({"C": "1.0"}, "0.01")
    assert strong.gate is not None and strong.gate.outcome == "Promoted", strong.gate
    assert strong.gate.current_score == pytest.approx(weak.metrics["accuracy"])
    assert strong.gate.previous_version == weak.version
    assert registry.resolve("m", "champion") == strong.version
    assert (weak.gate.generation, strong.gate.generation) == (1, 2)  # each move's, for the operator to order them

    strong_again = attempt({"C": "1.0"}, "0.01")
    assert strong_again.version == strong.version and strong_again.gate is not None
    assert strong_again.gate.outcome == "Promoted" and strong_again.gate.previous_version == strong.version
    assert strong_again.gate.message == "the same model was trained again"
    assert strong_again.gate.generation == 2  # no move
    # The alias record is untouched, so it still names the version to roll back to.
    assert json.loads((tmp_path / "registry/m/aliases/champion.json").read_text())["previous"] == weak.version

    again_weak = attempt({"C": "0.0001", "max_iter": 20}, "0")
    assert again_weak.gate is not None and again_weak.gate.outcome == "Rejected"
    assert again_weak.version == weak.version  # same content, same version
    assert registry.resolve("m", "champion") == strong.version

    too_demanding = attempt({"C": "10.0", "max_iter": 2000}, "0.5")
    assert too_demanding.gate is not None and too_demanding.gate.outcome == "Rejected"
    assert "< required 0.5" in too_demanding.gate.message
    assert registry.resolve("m", "champion") == strong.version
    alias = json.loads((tmp_path / "registry/m/aliases/champion.json").read_text())
    assert alias["previous"] == weak.version


def test_a_promotion_gated_against_a_champion_that_was_replaced_since_is_rejected(tmp_path: Path) -> None:
    """Two runs gated against the same champion: the second to move the alias finds it moved, and reports
    that it was not promoted instead of replacing a model it was never compared with."""
    data = write_dataset(tmp_path, "breast_cancer")
    uri = f"file://{tmp_path}/registry"
    registry = Registry(open_store(uri))
    spec = make_spec(data, uri, "logisticRegression", promote={"alias": "champion", "minImprovement": "0"})
    first = train(spec, data.read_bytes(), registry, {})
    other = registry.publish("m", b"another run's model", b"p", {}).version
    gated = Gate("champion", "Promoted", 0.99, 0.9, first.version, "better by 0.09")  # gated against first
    registry.set_alias("m", "champion", other)  # the other run promoted in between
    newer = registry.publish("m", b"this run's model", b"p", {}).version
    decision = promote(spec, registry, newer, gated)
    assert decision is not None and decision.outcome == "Rejected"
    assert (
        decision.message
        == f"not promoted: champion of m moved to {other} after {newer} was compared with {first.version}"
    )
    assert registry.resolve("m", "champion") == other


def test_regression_gate_prefers_lower_rmse(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, "diabetes")
    uri = f"file://{tmp_path}/registry"
    registry = Registry(open_store(uri))
    promote = {"alias": "prod", "minImprovement": "1"}
    poor = make_spec(data, uri, "ridge", params={"alpha": "1000"}, promote=promote)
    good = make_spec(data, uri, "ridge", params={"alpha": "0.1"}, promote=promote)
    first = train(poor, data.read_bytes(), registry, {})
    second = train(good, data.read_bytes(), registry, {})
    assert second.metrics["rmse"] < first.metrics["rmse"] - 1
    assert second.gate is not None and second.gate.outcome == "Promoted"
    assert registry.resolve("m", "prod") == second.version


def test_parity_check_catches_a_model_that_disagrees(tmp_path: Path) -> None:
    x, y = datasets.load_iris(return_X_y=True)
    spec = make_spec(write_dataset(tmp_path, "iris"), f"file://{tmp_path}", "logisticRegression")
    fitted = build_pipeline(spec.model, 0).fit(x, y)
    other = build_pipeline(spec.model, 0).fit(x, np.roll(y, 50))
    data = Dataset(x, y, [f"f{i}" for i in range(4)], "d", [])
    with pytest.raises(TrainingError, match="disagree on") as caught:
        parity_error(fitted, OnnxModel(export_onnx(other, data)), x, Task.CLASSIFICATION, data)
    assert caught.value.reason == "ParityFailed"


def _run(spec: dict[str, Any], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    log = tmp_path / "termination-log"
    status = run(json.dumps(spec), {"namespace": "ns", "name": "tj", "uid": "u-1"}, log)
    return status, json.loads(log.read_text())


def test_entrypoint_trains_from_s3_to_s3(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> None:
    data = write_dataset(tmp_path, "iris")
    open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint).put("datasets/iris.csv", data.read_bytes())
    spec = make_spec(data, f"s3://{s3_bucket}/registry", "gradientBoosting", params={"n_estimators": 30})
    wire = spec.to_wire()
    wire["dataset"]["uri"] = f"s3://{s3_bucket}/datasets/iris.csv"
    wire["storage"] = {"endpointUrl": s3_endpoint}
    wire["promote"] = {"alias": "champion"}
    status, report = _run(wire, tmp_path)
    assert status == 0, report
    assert report["succeeded"] is True
    assert report["promotion"]["outcome"] == "Promoted" and report["promotion"]["generation"] == 1
    registry = Registry(open_store(f"s3://{s3_bucket}/registry", endpoint_url=s3_endpoint))
    assert registry.resolve("m", "champion") == report["version"]
    assert registry.read_run("m", "u-1")["run"] == {"namespace": "ns", "name": "tj", "uid": "u-1"}
    assert report["uri"] == f"s3://{s3_bucket}/registry/m/versions/{report['version']}"


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (
            {"model": {"algorithm": "randomForest", "params": {"n_trees": 5}}},
            "InvalidParams",
            "does not take n_trees",
        ),
        (
            {"model": {"algorithm": "randomForest", "params": {"random_state": 5}}},
            "InvalidParams",
            "random_state",
        ),
        (
            {"model": {"algorithm": "logisticRegression", "params": {"C": "-1"}}},
            "InvalidParams",
            "'C' parameter",
        ),
        ({"dataset": {"uri": "DATA", "target": "label"}}, "InvalidDataset", "target column 'label'"),
        (
            {"dataset": {"uri": "file:///nonexistent/x.csv", "target": "species"}},
            "DatasetNotFound",
            "no dataset",
        ),
        ({"evaluation": {"metric": "rmse"}}, "InvalidSpec", "metric rmse is for regression"),
        (  # the store refuses: reported, never a traceback in the log's tail as the termination message
            {"output": {"registry": "file:///dev/null/registry", "modelName": "m"}},
            "TrainerError",
            "the trainer failed with NotADirectoryError",
        ),
    ],
)
def test_entrypoint_reports_failures_with_a_reason(
    tmp_path: Path, change: dict[str, Any], reason: str, message: str
) -> None:
    data = write_dataset(tmp_path, "iris")
    wire = make_spec(data, f"file://{tmp_path}/registry", "logisticRegression").to_wire()
    wire.update(json.loads(json.dumps(change).replace("DATA", f"file://{data}")))
    status, report = _run(wire, tmp_path)
    assert status == 1
    assert report["succeeded"] is False
    assert report["reason"] == reason
    assert message in report["message"]
    assert not (tmp_path / "registry").exists() or not list((tmp_path / "registry").rglob("model.onnx"))


SECRET = "s3cr3t-T0ken-9f8e"
ROWS = "".join(f"{i % 3},{i}.5,{i * 2}\n" for i in range(30))
NOT_DATA = {
    "a process environment": f"AWS_SECRET_ACCESS_KEY={SECRET}\0HOME=/root\0".encode(),
    "the secret as the header": f"{SECRET},b,c\n1,2,3\n".encode(),
    "the secret as a feature's name": f"species,{SECRET},c\n{ROWS}x,abc,1\n".encode(),
    "the secret in a feature's cell": f"species,b,c\n{ROWS}1,{SECRET},3\n".encode(),
    "the secret in a label, for regression": f"species,b,c\n{ROWS}{SECRET},1,2\n".encode(),
    "bytes": bytes(range(256)) * 3 + SECRET.encode() + b"\xff\xfe\x00",
    "an unterminated quote": f'species,b,c\n1,"{SECRET},2\n'.encode(),
    "ragged rows": f"species,b\n1,2\n1,2,3,{SECRET}\n".encode(),
    "json": json.dumps({"credentials": SECRET}).encode(),
}
CATEGORIES = {"the secret as a feature's name", "the secret in a feature's cell"}  # CSV that is data after all


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("content", list(NOT_DATA), ids=list(NOT_DATA))
def test_a_report_never_quotes_the_file(
    tmp_path: Path, content: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The URI may reach a file it should not (another tenant's, a process's environment): what the
    file holds never reaches the report, which becomes status and an Event."""
    data = tmp_path / f"data.{fmt}"
    data.write_bytes(NOT_DATA[content])
    algorithm = "ridge" if "regression" in content else "logisticRegression"
    wire = _spec_body(f"file://{data}")
    wire["dataset"]["format"] = fmt
    wire["model"]["algorithm"] = algorithm
    status, report = _run(wire, tmp_path)
    if fmt == "csv" and content in CATEGORIES:  # a column of text is a categorical column: it trains
        assert status == 0 and report["succeeded"], report
    else:
        assert status == 1 and report["reason"] == "InvalidDataset", report
    assert SECRET not in json.dumps(report) and SECRET not in capsys.readouterr().out


def test_a_file_uri_stays_on_the_claim(tmp_path: Path) -> None:
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    write_dataset(outside, "iris")
    (store / "iris.csv").symlink_to(outside / "iris.csv")
    claim = {"volumeClaimName": "data", "mountPath": str(store)}
    traversal = f"file://{store}/../outside/iris.csv"
    with pytest.raises(ValueError, match=r"\. or \.\. segments"):
        parse_spec(TrainingJobSpec, {**_spec_body(traversal), "storage": claim}).storage.check_file_uris(traversal)  # type: ignore[union-attr]
    wire = {**_spec_body(f"file://{store}/iris.csv"), "storage": claim}
    status, report = _run(wire, tmp_path)
    assert status == 1 and report["reason"] == "InvalidDataset"
    assert "leads outside storage.mountPath" in report["message"]


def _spec_body(uri: str) -> dict[str, Any]:
    return {
        "dataset": {"uri": uri, "target": "species"},
        "model": {"algorithm": "logisticRegression"},
        "output": {"registry": f"file://{Path(uri[7:]).parent}/registry", "modelName": "m"},
    }


def test_feedback_trains_on_the_labelled_live_traffic(tmp_path: Path) -> None:
    """What the serving pods logged and clients labelled, joined and added: the retrain learns the moved world."""
    data = write_dataset(tmp_path, "iris")
    uri = f"file://{tmp_path}/registry"
    store = open_store(uri)
    registry = Registry(store)
    spec = make_spec(data, uri, "logisticRegression", model_name="iris")
    v1 = train(spec, data.read_bytes(), registry, {})
    frame = pd.read_csv(data)
    species = frame["species"].to_numpy()
    live = frame.iloc[:, :4].to_numpy(np.float32)
    live[:, 2:] += 1.5  # the petals of live traffic look different
    served = OnnxModel(registry.read("iris", v1.version, MODEL))

    log = PredictionLog(store, "iris", v1.version, sample_percent=100, max_queue=1000, flush_seconds=60)
    signer = Signer(b"key")
    order = np.random.default_rng(0).permutation(150)  # the data set is sorted by species

    def logged(rows: Any) -> str:
        return log_prediction(log, signer.issue(v1.version, len(rows), 0), live[rows], served.predict(live[rows]))

    ids = [logged([i]) for i in order[:140]]
    batch, misfit = logged(order[140:143]), logged(order[143:145])
    for request, i in zip(ids[:120], order[:120], strict=True):  # 20 requests never get a label
        log.offer("feedback", {"id": request, "label": "wrong", "time": 0.0, "labeller": "desk"})
        log.offer("feedback", {"id": request, "label": species[i], "time": 1.0, "labeller": "desk"})  # the latest
    for request in ids[120:]:  # anonymous labels train nothing
        log.offer("feedback", {"id": request, "label": "setosa", "time": 1.0})
    log.offer("feedback", {"id": batch, "label": species[order[140:143]].tolist(), "time": 1.0, "labeller": "desk"})
    log.offer("feedback", {"id": misfit, "label": "setosa", "time": 1.0, "labeller": "desk"})  # one label, two rows
    log.close()

    wire = spec.to_wire()
    with_live = parse_spec(TrainingJobSpec, {**wire, "dataset": {**wire["dataset"], "feedback": {}}})
    v2 = train(with_live, data.read_bytes(), registry, {})
    meta = json.loads(registry.read("iris", v2.version, "metadata.json"))
    assert meta["dataset"]["rows"] == 150 + 123
    assert meta["dataset"]["feedback"] == {
        "model": "iris", "rows": 123, "predictions": 142, "unlabelled": 20, "dropped": {"label": 1},
        "anonymousLabels": 20, "sources": [{"name": "desk", "rows": 123}],
        "outsideSupport": 75, "outsideSupportShare": "0.609756", "leftOut": 0,  # petals longer than any curated
    }  # fmt: skip
    assert v2.version != v1.version and meta["dataset"]["sha256"] != json.loads(
        registry.read("iris", v1.version, "metadata.json"))["dataset"]["sha256"]  # fmt: skip

    def accuracy(version: str) -> float:
        unlabelled = order[120:140]  # requests that were never labelled
        labels = OnnxModel(registry.read("iris", version, MODEL)).predict(live[unlabelled]).outputs
        return float(np.mean(labels == species[unlabelled]))

    print(f"\naccuracy on unlabelled live traffic: v1 {accuracy(v1.version):.2f}, v2 {accuracy(v2.version):.2f}")
    assert accuracy(v2.version) > accuracy(v1.version)


def _lines(*records: Any) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def test_feedback_reads_the_newest_traffic_and_never_fails_on_a_bad_record(tmp_path: Path) -> None:
    """Hostile or broken records are left out and counted; the newest predictions (by the time in their
    file's name, not by their version's name) are read first, and reading stops at maxRows."""
    data = write_dataset(tmp_path, "iris")
    uri = f"file://{tmp_path}/registry"
    store = open_store(uri)
    registry = Registry(store)
    spec = make_spec(data, uri, "logisticRegression", model_name="iris")
    train(spec, data.read_bytes(), registry, {})

    def prediction(i: int, row: Any = None) -> dict[str, Any]:
        return {"id": f"p{i}", "time": i, "inputs": [row or [5.0 + i / 10, 3.0, 1.5, 0.2]], "outputs": ["setosa"]}

    old, new, now = range(0, 5), range(10, 15), time.time()
    store.put(log_key("iris", "predictions", "vz", now - 7 * DAY, "h", 1), _lines(*map(prediction, old)))
    store.put(log_key("iris", "predictions", "va", now - DAY, "h", 1), _lines(
        *map(prediction, new), "not json", {"inputs": [[1, 2, 3, 4]]}, prediction(20, [1.0, 2.0, 3.0]),
        prediction(21, [1.0, "2", 3.0, 4.0]), prediction(22), prediction(23), prediction(24)))  # fmt: skip
    labels = [{"id": f"p{i}", "label": "virginica", "time": 1, "labeller": "desk"} for i in [*old, *new, 20, 21]]
    hostile = [{"id": "p22", "label": 7, "time": 1}, {"id": "p23", "label": ["setosa", "setosa"], "time": 1},
               {"id": "p24", "label": {"x": 1}, "time": 1}]  # fmt: skip
    hostile = [{**record, "labeller": "desk"} for record in hostile]
    store.put(log_key("iris", "feedback", "va", now - DAY + 1, "h", 2), _lines(*labels, *hostile, "{broken"))

    wire = spec.to_wire()
    live = parse_spec(TrainingJobSpec, {**wire, "dataset": {**wire["dataset"], "feedback": {"maxRows": 5}}})
    result = train(live, data.read_bytes(), registry, {})  # an int among string labels used to crash np.unique
    meta = registry.metadata("iris", result.version)
    assert meta["dataset"]["feedback"] == {
        "model": "iris", "rows": 5, "predictions": 10, "unlabelled": 0,
        "dropped": {"malformed": 3, "shape": 2, "label": 3}, "anonymousLabels": 0,
        "sources": [{"name": "desk", "rows": 5}], "outsideSupport": 0, "outsideSupportShare": "0", "leftOut": 0,
    }  # fmt: skip
    assert meta["dataset"]["rows"] == 150 + 5
    rows = labelled_rows(store, "iris", ["a", "b", "c", "d"], set(), 5, lambda label: isinstance(label, str))
    assert sorted(rows.x[:, 0].round(2)) == [
        6.0,
        6.1,
        6.2,
        6.3,
        6.4,
    ]  # the newest file's, though its version sorts first


def test_feedback_reads_only_what_was_logged_within_its_window(tmp_path: Path) -> None:
    """Predictions and labels logged before the window are not read (nor listed files that are no log's), so
    that a store full of old or replayed records costs a retrain nothing; a label for a prediction inside the
    window, posted inside it, is."""
    store, now = open_store(f"file://{tmp_path}/registry"), time.time()
    inside = {"id": "in", "time": now, "inputs": [[5.0, 3.0, 1.5, 0.2]], "outputs": ["setosa"]}
    outside = {**inside, "id": "out"}
    store.put(log_key("iris", "predictions", "v1", now - 31 * DAY, "h", 1), _lines(outside))
    store.put(log_key("iris", "predictions", "v1", now - 29 * DAY, "h", 2), _lines(inside))
    store.put(
        log_key("iris", "feedback", "v1", now - 31 * DAY, "h", 3),
        _lines({"id": "in", "label": "x", "time": 1, "labeller": "desk"}),
    )
    store.put(
        log_key("iris", "feedback", "v1", now - DAY, "h", 4),
        _lines({"id": "out", "label": "y", "time": 2, "labeller": "desk"}),
    )
    store.put(
        "iris/feedback/v1/not-a-log-file.jsonl", _lines({"id": "in", "label": "z", "time": 3, "labeller": "desk"})
    )
    fits = lambda label: isinstance(label, str)  # noqa: E731
    read = labelled_rows(store, "iris", ["a", "b", "c", "d"], set(), 100, fits, since=now - 30 * DAY)
    assert (read.predictions, read.unlabelled, len(read.y)) == (1, 1, 0)  # "in": its only label is too old
    store.put(
        log_key("iris", "feedback", "v1", now, "h", 5),
        _lines({"id": "in", "label": "w", "time": 4, "labeller": "desk"}),
    )
    read = labelled_rows(store, "iris", ["a", "b", "c", "d"], set(), 100, fits, since=now - 30 * DAY)
    assert read.y.tolist() == ["w"] and read.predictions == 1
    assert len(labelled_rows(store, "iris", ["a", "b", "c", "d"], set(), 100, fits).y) == 2  # no window: all


def _weak_champion(tmp_path: Path) -> tuple[Path, Registry, TrainingJobSpec, Any]:
    """iris in a file:// registry with a deliberately weak champion, and a retrain spec that learns from
    the live traffic and may promote."""
    data = write_dataset(tmp_path, "iris")
    uri = f"file://{tmp_path}/registry"
    registry = Registry(open_store(uri))
    weak = make_spec(data, uri, "logisticRegression", model_name="iris", params={"C": "0.0001", "max_iter": 20},
                     promote={"alias": "champion"})  # fmt: skip
    champion = train(weak, data.read_bytes(), registry, {})
    wire = make_spec(data, uri, "logisticRegression", model_name="iris", promote={"alias": "champion",
                     "minImprovement": "0.01"}).to_wire()  # fmt: skip
    retrain = parse_spec(TrainingJobSpec, {**wire, "dataset": {**wire["dataset"], "feedback": {}}})
    return data, registry, retrain, champion


def _client(registry: Registry, version: str, rows: Any, labels: list[Any], per_request: int,
            labeller: str | None = "desk") -> None:  # fmt: skip
    """A client of the served champion: requests of ``per_request`` rows, each labelled through feedback by
    ``labeller`` (None: anonymously)."""
    log = PredictionLog(registry.store, "iris", version, sample_percent=100, max_queue=10_000, flush_seconds=60)
    served, signer = OnnxModel(registry.read("iris", version, MODEL)), Signer(b"key")
    for start in range(0, len(rows), per_request):
        batch = rows[start : start + per_request]
        issued = log_prediction(log, signer.issue(version, len(batch), 0), batch, served.predict(batch))
        label = labels[start : start + per_request]
        log.offer("feedback", {"id": issued, "label": label if len(batch) > 1 else label[0], "time": 1.0,
                               "labeller": labeller})  # fmt: skip
    log.close()


@pytest.mark.parametrize("poisoned", [False, True], ids=["honest", "poisoned"])
def test_live_labels_cannot_poison_the_gate(tmp_path: Path, poisoned: bool) -> None:
    """Drifted traffic labelled honestly gets the retrain promoted; one request labelling 40 setosa-like rows
    'virginica' on top of it does not, because the curated holdout, which no client labels, grades (b)."""
    data, registry, retrain, champion = _weak_champion(tmp_path)
    frame = pd.read_csv(data)
    x, species = frame.iloc[:, :4].to_numpy(np.float32), frame["species"].tolist()
    rng = np.random.default_rng(3)
    picks = rng.integers(0, 150, 240)
    drifted = x[picks] + np.array([1.6, 0.9, 0, 0], dtype=np.float32)  # the sepals moved by 2 sd
    _client(registry, champion.version, drifted, [species[i] for i in picks], per_request=2)
    if poisoned:
        setosa = x[rng.integers(0, 50, 40)] + rng.normal(0, 0.05, (40, 4)).astype(np.float32)
        _client(registry, champion.version, setosa, ["virginica"] * 40, per_request=40)

    result = train(retrain, data.read_bytes(), registry, {"name": "retrain"})
    assert result.gate is not None and result.gate.improvement and result.gate.regression
    better, kept = result.gate.improvement, result.gate.regression
    print(f"\n{'poisoned' if poisoned else 'honest'}: {result.gate.outcome}: {result.gate.message}")
    assert better.holdout == "live" and better.rows > 0 and better.passed  # drift: either retrain beats the champion
    assert kept.holdout == "curated" and kept.rows == 38 and kept.baseline is not None
    assert result.gate.outcome == ("Rejected" if poisoned else "Promoted")
    assert kept.passed is not poisoned
    record = registry.read_run("iris", result.version)["promotion"]  # the run record says which rows graded what
    assert record["improvement"]["holdout"] == "live" and record["regression"]["holdout"] == "curated"
    assert registry.resolve("iris", "champion") == (champion.version if poisoned else result.version)
    meta = registry.metadata("iris", result.version)
    assert meta["holdout"]["liveRows"] == better.rows and meta["holdout"]["liveRequests"] >= 1


def test_the_reserved_prediction_column_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "iris.csv"
    pd.read_csv(io.BytesIO(sample_csv("iris"))).rename(columns={"sepal_width_cm": "__prediction__"}).to_csv(
        data, index=False
    )
    status, report = _run(_spec_body(f"file://{data}"), tmp_path)
    assert status == 1 and report["reason"] == "InvalidDataset" and "__prediction__ is reserved" in report["message"]


def test_a_text_feature_is_a_category_unless_the_spec_says_it_is_a_number(tmp_path: Path) -> None:
    data = tmp_path / "iris.csv"
    frame = pd.read_csv(io.BytesIO(sample_csv("iris")))
    frame.insert(1, "colour", "red")  # the file's second column
    frame.to_csv(data, index=False)
    status, report = _run(_spec_body(f"file://{data}"), tmp_path)
    assert status == 0 and report["succeeded"], report
    wire = _spec_body(f"file://{data}")
    wire["dataset"]["numeric"] = ["colour"]
    status, report = _run(wire, tmp_path)
    assert (status, report["message"]) == (1, "column 'colour' is not numeric")
