"""Mixed-type tabular data (#16): categorical columns from the CSV to the drift bins. Canonical categories,
categorical profiles, training on palmerpenguins (string categories, missing values) with exact parity on
seen, unseen and missing categories, and a real server answering per-column tensors in JSON, in tritonclient's
binary form and as v1 objects."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as oip
import yaml
from hypothesis import given
from hypothesis import strategies as st

from regrow.api import TrainingJobSpec, parse_spec, validate_object
from regrow.api.driftpolicy import DriftPolicySpec, DriftTestType
from regrow.controller.driftpolicy import _last_check
from regrow.drift.policy import Layout, check
from regrow.drift.profile import MISSING_BIN, OTHER, FeatureProfile, Profile, fit_categories, fit_columns
from regrow.inference import OnnxModel
from regrow.serving import metrics
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.tabular import MAX_CATEGORY_CHARS, NotCategorical, canonical, missing
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import TrainingError, load_dataset, train
from tests.unit.test_server import Server, local, running, start, stop, wait_ready

CATEGORICAL = ["island", "sex"]
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
COLUMNS = ["island", *NUMERIC[:3], "body_mass_g", "sex"]  # the CSV's order


def test_every_value_has_one_canonical_category() -> None:
    values = ["Biscoe", "", None, float("nan"), True, False, 3, 3.0, "3", 2.5, np.int64(7), np.bool_(True), b"Dream"]
    assert canonical(values).tolist() == [
        "Biscoe", "", "", "", "true", "false", "3", "3", "3", "2.5", "7", "true", "Dream",
    ]  # fmt: skip
    assert canonical([["a"], [None]]).tolist() == [["a"], [""]]
    for bad in ([1, [2]], [{"a": 1}], [float("inf")], [b"\xff"], ["x" * (MAX_CATEGORY_CHARS + 1)]):
        with pytest.raises((NotCategorical, ValueError)):
            canonical(bad)
    assert canonical(["x" * MAX_CATEGORY_CHARS]).tolist() == ["x" * MAX_CATEGORY_CHARS]
    table = np.array([["a", 1.0], ["", np.nan], ["b", 2.0]], dtype=object)
    assert missing(table).tolist() == [[False, False], [True, True], [False, False]]
    assert missing(np.array([[1.0, np.nan]])).tolist() == [[False, True]]


def test_a_categorical_profile_keeps_the_commonest_categories_then_other_and_missing() -> None:
    values = canonical(["b", "a", "a", "c", "c", "", "d", None, "b", "a"])
    feature = fit_categories(values, "f", max_categories=2)
    assert feature.categories == ("a", "b")  # a: 3, then b and c tie at 2: by name
    assert feature.labels == ["a", "b", OTHER, MISSING_BIN]
    assert feature.counts == (3, 2, 3, 2)
    assert feature.count(["a", "zzz", "", "b", "c"]).tolist() == [1, 1, 2, 1]  # unseen and rarer: other
    assert FeatureProfile.from_dict(json.loads(json.dumps(feature.to_dict()))) == feature
    prediction = FeatureProfile("__prediction__", (), (0, 0), ("x", "y"))  # a classifier's: no other, no missing
    assert prediction.count(["x", "z", "y", "y"]).tolist() == [1, 2] and prediction.labels == ["x", "y"]
    assert FeatureProfile("p", (), (0, 0), ("1", "2")).count(np.array([1, 2, 2, 3])).tolist() == [1, 2]  # int labels


def test_a_category_counts_as_itself_whatever_its_bytes_and_length() -> None:
    """Counted as the values are, with no fixed-width copy: such a copy dropped a trailing NUL ("Dream\\0" counted
    as Dream, which the model takes for unseen) and made rows x the longest value x 4 bytes."""
    feature = fit_categories(canonical(["Dream", "Biscoe", "Dream", ""]), "island")
    long = "y" * MAX_CATEGORY_CHARS
    got = feature.count(canonical(["Dream\0", "Dream", "Biscoe\0\0", long, "", None])).tolist()
    assert got == [1, 0, 3, 2]  # Dream, Biscoe, then other (two NUL-ended and the long one), then missing
    assert fit_categories(canonical(["a\0", "a", "a\0"]), "f").categories == ("a\0", "a")


@given(st.lists(st.sampled_from(["<other>", "<missing>", "<<other>", "<", "", "a", "<a"]), min_size=1, max_size=40))
def test_no_category_takes_a_reserved_bin_label(values: list[str]) -> None:
    feature = fit_categories(values, "f", max_categories=10)
    assert len(set(feature.labels)) == len(feature.labels)  # every bin its own label
    assert sum(feature.counts) == len(values) and feature.count(values).tolist() == list(feature.counts)


def test_mixed_columns_count_as_their_features_do_alone() -> None:
    rng = np.random.default_rng(3)
    columns = [canonical(rng.choice(["x", "y", "", "z"], 500)), rng.normal(size=500),
               canonical(rng.integers(0, 9, 500))]  # fmt: skip
    profile = fit_columns(columns, ["c", "n", "codes"], {"c", "codes"}, max_categories=5)
    assert [f.numeric for f in profile.features] == [False, True, False] and not profile.numeric
    assert profile.column_counts(columns).tolist() == profile.reference_counts().tolist()
    alone = [f.count(c) for f, c in zip(profile.features, columns, strict=True)]
    assert profile.column_counts(columns).tolist() == np.concatenate(alone).tolist()
    assert Profile.from_json(profile.to_json()) == profile


def _spec(root: Path, algorithm: str = "logisticRegression", **dataset: Any) -> TrainingJobSpec:
    return parse_spec(TrainingJobSpec, {
        "dataset": {"uri": f"file://{root}/penguins.csv", "target": "species", **dataset},
        "model": {"algorithm": algorithm},
        "output": {"registry": f"file://{root}/registry", "modelName": "penguins"},
        "promote": {"alias": "champion"},
    })  # fmt: skip


def publish_penguins(root: Path, algorithm: str = "logisticRegression", **dataset: Any) -> str:
    """Train palmerpenguins into ``root``'s registry and make it the champion; its version."""
    (root / "penguins.csv").write_bytes(sample_csv("penguins"))
    registry = Registry(open_store(f"file://{root}/registry"))
    return train(_spec(root, algorithm, **dataset), (root / "penguins.csv").read_bytes(), registry, {}).version


@pytest.mark.parametrize("algorithm", ["logisticRegression", "randomForest", "gradientBoosting"])
def test_penguins_train_with_categories_and_missing_values_into_a_graph_of_columns(
    tmp_path: Path, algorithm: str
) -> None:
    version = publish_penguins(tmp_path, algorithm, maxCategories=2)
    root = tmp_path / "registry/penguins/versions" / version
    metadata = json.loads((root / "metadata.json").read_text())
    assert metadata["categorical"] == CATEGORICAL and metadata["maxCategories"] == 2
    assert metadata["parityError"] < 1e-4 and metadata["metrics"]["accuracy"] > 0.9
    model = OnnxModel((root / "model.onnx").read_bytes())
    assert model.inputs == [(name, name in CATEGORICAL) for name in COLUMNS]
    profile = Profile.from_json((root / "profile.json").read_bytes())
    island = profile.features[0]
    assert island.categories == ("Biscoe", "Dream") and island.labels[-2:] == [OTHER, MISSING_BIN]
    assert island.counts[2] > 0  # Torgersen, rarer, is other
    sex = profile.features[-1]
    assert sex.counts[-1] > 0  # some penguins' sex is missing
    rows = pd.read_csv(tmp_path / "penguins.csv")
    assert sum(island.counts) < len(rows)  # the profile is the training split's


def test_which_columns_are_categorical_the_data_says_unless_the_spec_does(tmp_path: Path) -> None:
    frame = pd.DataFrame({"code": [1, 2, 3, 1] * 5, "flag": [True, False] * 10, "text": ["1.5", "2"] * 10,
                          "word": ["x", "y"] * 10, "label": ["a", "b"] * 10})  # fmt: skip
    (tmp_path / "d.csv").write_bytes(frame.to_csv(index=False).encode())

    def spec(**dataset: Any) -> TrainingJobSpec:
        return parse_spec(TrainingJobSpec, {
            "dataset": {"uri": f"file://{tmp_path}/d.csv", "target": "label", **dataset},
            "model": {"algorithm": "randomForest"}, "output": {"registry": "file:///r", "modelName": "m"},
        })  # fmt: skip

    raw = (tmp_path / "d.csv").read_bytes()
    assert load_dataset(spec(), raw).categorical == ["flag", "word"]  # "1.5" and "2" read as numbers
    coded = load_dataset(spec(categorical=["code"], numeric=["text"]), raw)
    assert coded.categorical == ["code", "flag", "word"]
    assert coded.x[:3, 0].tolist() == ["1", "2", "3"] and coded.x[:2, 1].tolist() == ["true", "false"]
    assert coded.x[:2, 2].tolist() == [1.5, 2.0]
    with pytest.raises(TrainingError, match="is not numeric"):
        load_dataset(spec(numeric=["word"]), raw)
    with pytest.raises(TrainingError, match="not in the dataset"):
        load_dataset(spec(categorical=["absent"]), raw)
    with pytest.raises(ValueError, match="both name code"):
        spec(categorical=["code"], numeric=["code"])


def test_labelled_live_traffic_of_categorical_columns_joins_the_retrain(penguins: tuple[Server, Path, str]) -> None:
    server, root, _ = penguins
    body = {"inputs": [_tensor(n, ROWS[n]) for n in COLUMNS]}
    labels = ["Gentoo", "Chinstrap", "Adelie", "Adelie"]
    for _ in range(3):
        status, answer = server.call("POST", "/v2/models/penguins/infer", body)
        assert status == 200
        feedback = {"id": answer["parameters"]["prediction_id"], "label": labels}
        assert server.call("POST", "/v2/models/penguins/feedback", feedback, headers=LABELLER)[0] == 202
    deadline = time.monotonic() + 15
    live, registry = None, Registry(open_store(f"file://{root}/registry"))
    spec = _spec(root, "randomForest", feedback={"maxRows": 8})
    while time.monotonic() < deadline:  # the log writes every 5 s
        result = train(spec, (root / "penguins.csv").read_bytes(), registry, {})
        live = registry.metadata("penguins", result.version)["dataset"].get("feedback")
        if live and live["rows"] == 8:
            break
        time.sleep(1)
    assert live is not None and live["rows"] == 8 and live["dropped"] == {}, live  # two whole requests, no more


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, str]]:
    root = tmp_path_factory.mktemp("penguins")
    version = publish_penguins(root, "randomForest")
    (root / "labellers/field-team").mkdir(parents=True)
    (root / "labellers/field-team/token").write_text(LABELLER["regrow-labeller-token"])
    config = local(root, model="penguins", alias="champion", log_percent=100, feedback_key="k" * 32,
                   labellers_dir=str(root / "labellers"))  # fmt: skip
    with running(config) as server:
        wait_ready(server)
        yield server, root, version


LABELLER = {"regrow-labeller-token": "field-team-0123456789abcdef"}  # a labeller the fixture's server names
ROWS: dict[str, list[Any]] = {
    "island": ["Biscoe", "Dream", None, "Atlantis"],
    "bill_length_mm": [46.1, 48.0, None, 39.0],
    "bill_depth_mm": [13.2, 18.4, 17.0, 18.0],
    "flipper_length_mm": [211, 195, 200, 190],
    "body_mass_g": [4500, 3700, 4000, 3600],
    "sex": ["female", "", "male", True],
}


def _tensor(name: str, values: list[Any], nested: bool = False) -> dict[str, Any]:
    datatype = "BYTES" if name in CATEGORICAL else "INT64" if isinstance(values[0], int) else "FP64"
    data = [[v] for v in values] if nested else values
    return {"name": name, "shape": [len(values), 1] if nested else [len(values)], "datatype": datatype, "data": data}


def _direct(root: Path, version: str) -> list[str]:
    """What the model predicts for ROWS called in-process, their values canonical."""
    model = OnnxModel((root / "registry/penguins/versions" / version / "model.onnx").read_bytes())
    columns = [canonical(ROWS[n]) if n in CATEGORICAL else np.array(ROWS[n], dtype=np.float64) for n in COLUMNS]
    return model.predict(columns).outputs.tolist()  # type: ignore[no-any-return]


def test_per_column_tensors_in_json_binary_and_v1_objects_agree(penguins: tuple[Server, Path, str]) -> None:
    server, root, version = penguins
    want = _direct(root, version)
    status, meta = server.call("GET", "/v2/models/penguins")
    assert status == 200 and [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        (n, "BYTES" if n in CATEGORICAL else "FP32", [-1, 1]) for n in COLUMNS
    ]
    for nested in (False, True):
        body = {"inputs": [_tensor(n, ROWS[n], nested) for n in reversed(COLUMNS)]}  # any order, [n] or [n, 1]
        status, answer = server.call("POST", "/v2/models/penguins/infer", body)
        assert status == 200 and answer["outputs"][0]["data"] == want, answer
    objects = [{n: ROWS[n][i] for n in COLUMNS if ROWS[n][i] is not None} for i in range(4)]  # a key left out: missing
    assert server.call("POST", "/v1/models/penguins:predict", {"instances": objects})[1]["predictions"] == want
    rows = [[ROWS[n][i] for n in COLUMNS] for i in range(4)]
    assert server.call("POST", "/v1/models/penguins:predict", {"instances": rows})[1]["predictions"] == want
    client = oip.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensors = []
    for name in COLUMNS:
        if name in CATEGORICAL:
            array = np.array([[v] for v in canonical(ROWS[name])], dtype=object)  # "" is missing, in binary too
            tensor = oip.InferInput(name, [4, 1], "BYTES")
        else:
            numeric = np.array([[np.nan if v is None else v] for v in ROWS[name]])
            array = numeric.astype(np.int64 if name in ("flipper_length_mm", "body_mass_g") else np.float32)
            tensor = oip.InferInput(name, [4, 1], "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    assert client.infer("penguins", tensors).as_numpy("label").astype(str).tolist() == want


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        (lambda b: b["inputs"].pop(), 400, "one per column, exactly"),
        (lambda b: b["inputs"].append(_tensor("wings", [1, 2, 3, 4])), 400, "one per column, exactly"),
        (lambda b: b["inputs"][0].update(datatype="FP32"), 400, "input island is categorical: its datatype"),
        (lambda b: b["inputs"][0].update(data=["a", ["b"], "c", "d"]), 400, "input island is categorical: its values"),
        (lambda b: b["inputs"][0].update(data=[{"x": 1}] * 4), 400, "input island is categorical: its values"),
        (lambda b: b["inputs"][1].update(data=["a", "b", "c", "d"]), 400, "input bill_length_mm: data must be numbers"),
        (lambda b: b["inputs"][1].update(data=[1.0, 2.0], shape=[2]), 400, "same number of rows"),
        (lambda b: b["inputs"][1].update(shape=[2, 2]), 400, "[n] or [n, 1]"),
        (lambda b: b["inputs"][1].update(shape=[5]), 400, "do not fill its shape"),
        (lambda b: b["inputs"][0].update(shape=[10**9]), 413, "at most"),
    ],
)
def test_a_bad_column_is_a_4xx_naming_it(penguins: tuple[Server, Path, str], change: Any, status: int,
                                         message: str) -> None:  # fmt: skip
    server, _, _ = penguins
    body = {"inputs": [_tensor(n, ROWS[n]) for n in COLUMNS]}
    change(body)
    got = server.call("POST", "/v2/models/penguins/infer", body)
    assert got[0] == status and message in got[1]["error"], got


def test_a_category_longer_than_the_bound_is_refused_naming_its_column(penguins: tuple[Server, Path, str]) -> None:
    """One such value once asked a pod for gigabytes (a fixed-width copy of every queued value) and answered 500
    ever after; now the request is a 400 that names the column, and the pod serves on."""
    server, _, _ = penguins
    huge = "Dream" * 40_000  # 200,000 characters
    for body, url in (({"inputs": [_tensor(n, [huge, *ROWS[n][1:]] if n == "island" else ROWS[n]) for n in COLUMNS]},
                       "/v2/models/penguins/infer"),
                      ({"instances": [{**{n: ROWS[n][0] for n in COLUMNS}, "island": huge}]},
                       "/v1/models/penguins:predict")):  # fmt: skip
        status, answer = server.call("POST", url, body)
        assert status == 400 and "input island" in answer["error"], answer
        assert f"longer than {MAX_CATEGORY_CHARS} characters" in answer["error"] and "Dream" not in answer["error"]
    fine = {"inputs": [_tensor(n, ROWS[n]) for n in COLUMNS]}
    assert server.call("POST", "/v2/models/penguins/infer", fine)[0] == 200
    assert server.call("GET", "/v2/health/ready")[0] == 200 and server.call("GET", "/metrics")[0] == 200


def test_a_flush_of_the_feature_bins_that_fails_answers_no_500_and_the_pod_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever makes counting fail (memory, say): the request is answered, the rows queued are dropped and counted,
    and the pod is not ready for a while (out of the Service's endpoints), then ready and counting again."""
    version = publish_penguins(tmp_path)
    monkeypatch.setattr(metrics, "FLUSH_ROWS", 4)  # every request of ROWS' four rows flushes
    monkeypatch.setattr(metrics, "RECOVER_SECONDS", 1.0)
    server, inference = start(local(tmp_path, model="penguins", alias="champion"))
    try:
        wait_ready(server)
        body = {"inputs": [_tensor(n, ROWS[n]) for n in COLUMNS]}
        real = Profile.column_counts

        def exhausted(*_: Any) -> Any:
            raise MemoryError

        monkeypatch.setattr(Profile, "column_counts", exhausted)
        status, answer = server.call("POST", "/v2/models/penguins/infer", body)
        assert status == 200 and answer["model_version"] == version
        status, why = server.call("GET", "/v2/health/ready")
        assert status == 503 and "feature bins failed" in why["error"], why
        text = server.call("GET", "/metrics")[1]
        assert f'regrow_feature_bin_dropped_rows_total{{model="penguins",version="{version}"}} 4.0' in text
        monkeypatch.setattr(Profile, "column_counts", real)
        wait_ready(server, 5)
        assert server.call("POST", "/v2/models/penguins/infer", body)[0] == 200
        assert inference.state.metrics is not None and inference.state.metrics.bins is not None
        assert inference.state.metrics.bins.counts.sum() > 0  # counting again
    finally:
        stop(inference, server)


def test_v1_objects_name_only_known_columns(penguins: tuple[Server, Path, str]) -> None:
    server, _, _ = penguins
    status, body = server.call("POST", "/v1/models/penguins:predict", {"instances": [{"island": "Dream", "wings": 2}]})
    assert status == 400 and "unknown columns (wings)" in body["error"]
    status, body = server.call("POST", "/v1/models/penguins:predict", {"instances": [[1, 2]]})
    assert status == 400 and "rows of 6 values" in body["error"]
    status, body = server.call("POST", "/v1/models/penguins:predict", {"instances": [{"island": ["Dream"]}]})
    assert status == 400 and "input island: a column's shape is [n]" in body["error"]
    status, body = server.call("POST", "/v1/models/penguins:predict", {"instances": [{"island": {"a": 1}}]})
    assert status == 400 and "input island is categorical" in body["error"]


def test_live_categories_count_into_their_bins_and_the_log_keeps_columns(penguins: tuple[Server, Path, str]) -> None:
    server, root, _ = penguins

    def bins() -> dict[str, float]:
        lines = server.call("GET", "/metrics")[1].splitlines()
        island = [line for line in lines if line.startswith("regrow_feature_bin") and 'feature="island"' in line]
        return {line.split('bin="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in island}

    before = bins()
    body = {"inputs": [_tensor(n, ROWS[n]) for n in COLUMNS]}
    assert server.call("POST", "/v2/models/penguins/infer", body)[0] == 200
    after = bins()
    moved = {label: after[label] - before.get(label, 0) for label in after}
    assert moved == {"Biscoe": 1, "Dream": 1, "Torgersen": 0, OTHER: 1, MISSING_BIN: 1}
    columns = _logged(root)
    assert columns is not None, "the prediction log has no record of the request"
    assert list(columns) == COLUMNS and columns["island"] == ["Biscoe", "Dream", None, "Atlantis"]
    assert columns["sex"] == ["female", None, "male", "true"] and columns["bill_length_mm"][2] is None


def _logged(root: Path) -> dict[str, list[Any]] | None:
    """The columns of the logged request of ROWS' four rows, once the log has written it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        files = sorted((root / "registry/penguins/predictions").rglob("*.jsonl"))
        found = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
        columns = [r["columns"] for r in found if "columns" in r and r["columns"]["island"][-1] == "Atlantis"]
        if columns:
            return columns[0]  # type: ignore[no-any-return]
        time.sleep(0.5)
    return None


def test_the_readmes_requests_with_string_inputs_are_answered(penguins: tuple[Server, Path, str]) -> None:
    server, _, _ = penguins
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- categorical-example -->", 1)[1].split("```", 2)[1]
    calls = re.findall(r"curl -s localhost:8080(\S+) -d '(.*?)'", block, re.S)
    assert [path for path, _ in calls] == ["/v2/models/penguins/infer", "/v1/models/penguins:predict"]
    for path, body in calls:
        status, answer = server.call("POST", path, json.loads(body))
        assert status == 200, answer


def test_validation_reports_missing_and_unknown_categories_against_the_champion(tmp_path: Path) -> None:
    publish_penguins(tmp_path)
    moved = pd.read_csv(tmp_path / "penguins.csv")
    moved["island"] = np.where(np.arange(len(moved)) % 4 == 0, "Atlantis", moved["island"])  # a quarter unseen
    moved.loc[moved.index % 5 == 0, "sex"] = None
    (tmp_path / "penguins.csv").write_bytes(moved.to_csv(index=False).encode())
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    result = train(_spec(tmp_path), (tmp_path / "penguins.csv").read_bytes(), registry, {})
    checks = {c.check: c for c in result.validation}
    assert checks["columns"].passed and checks["types"].passed
    assert "'sex'" in checks["missingValues"].message and "+" in checks["missingValues"].message
    assert "'island'" in checks["ranges"].message and "25." in checks["ranges"].message


def test_a_champion_that_takes_other_inputs_is_not_scored_on_these(tmp_path: Path) -> None:
    """The same columns, one of them categorical now: the champion cannot be given these rows."""
    (tmp_path / "penguins.csv").write_bytes(sample_csv("penguins"))
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    raw = (tmp_path / "penguins.csv").read_bytes()
    first = train(_spec(tmp_path), raw, registry, {})
    coded = train(_spec(tmp_path, categorical=["flipper_length_mm"]), raw, registry, {})
    assert coded.gate is not None and coded.gate.outcome == "Rejected" and "takes other features" in coded.gate.message
    assert registry.resolve("penguins", "champion") == first.version


def test_a_check_reports_unseen_categories_and_the_tests_that_do_not_apply() -> None:
    rng = np.random.default_rng(11)
    training = [canonical(rng.choice(["a", "b", ""], 2000)), rng.normal(size=2000)]
    profile = fit_columns(training, ["c", "n"], {"c"})
    live = [canonical(np.where(rng.random(1000) < 0.3, "never seen", rng.choice(["a", "b"], 1000))),
            rng.normal(size=1000)]  # fmt: skip
    padded = Layout.pad(profile, profile.column_counts(live))
    result = check(Layout.of(profile), padded, {DriftTestType.PSI: None, DriftTestType.KS: None}, Decimal("0.5"), 100)
    categorical, numeric = _last_check(profile, "v1", result, padded)["features"]
    assert abs(float(categorical["otherShare"]) - 0.3) < 0.05 and categorical["drifted"]
    assert categorical["unscored"] == ["ks"] and set(categorical["scores"]) == {"psi"}
    assert numeric.get("otherShare") is None and not numeric.get("unscored") and set(numeric["scores"]) == {"psi", "ks"}


def test_the_penguins_examples_are_valid_and_train_on_what_sample_data_writes(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples/penguins/penguins.yaml"
    docs = list(yaml.safe_load_all(example.read_text()))
    assert [d["kind"] for d in docs] == ["TrainingJob", "ModelDeployment", "Secret", "DriftPolicy"]
    specs = [validate_object(d) for d in docs if d["kind"] != "Secret"]  # the field team's token
    job = specs[0]
    assert isinstance(job, TrainingJobSpec)
    (tmp_path / "penguins.csv").write_bytes(sample_csv("penguins"))
    here = job.model_copy(update={
        "dataset": job.dataset.model_copy(update={"uri": f"file://{tmp_path}/penguins.csv"}),
        "output": job.output.model_copy(update={"registry": f"file://{tmp_path}/registry"}),
        "storage": None,
    })  # fmt: skip
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    result = train(here, (tmp_path / "penguins.csv").read_bytes(), registry, {})
    assert result.gate is not None and result.gate.outcome == "Promoted"


def test_a_policy_without_tests_scores_numbers_by_psi_and_categories_by_chi_square() -> None:
    rng = np.random.default_rng(12)
    profile = fit_columns([canonical(rng.choice(["a", "b"], 2000)), rng.normal(size=2000)], ["c", "n"], {"c"})
    live = [canonical(rng.choice(["a", "b"], 1000, p=[0.9, 0.1])), rng.normal(1.0, 1.0, 1000)]  # both moved
    padded = Layout.pad(profile, profile.column_counts(live))
    spec = parse_spec(DriftPolicySpec, {"targetRef": {"name": "m"}, "driftShare": "0.5"})
    result = check(Layout.of(profile), padded, spec.thresholds(), Decimal("0.5"), 100, by_type=spec.tests is None)
    categorical, numeric = _last_check(profile, "v1", result, padded)["features"]
    assert set(categorical["scores"]) == {"chiSquare"} and categorical["unscored"] == ["psi"]
    assert set(numeric["scores"]) == {"psi"} and numeric["unscored"] == ["chiSquare"]
    assert categorical["drifted"] and numeric["drifted"]
