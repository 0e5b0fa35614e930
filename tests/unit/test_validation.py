"""The Validation stage: a retrain's dataset checked against the champion's contract and the spec's rules
before anything is trained or published."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from regrow.api import TrainingJobSpec, parse_spec
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.entrypoint import run
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import TrainingError, train

SECRET = "s3cr3t-cell"
IRIS = pd.read_csv(io.BytesIO(sample_csv("iris")))


@pytest.fixture
def champion(tmp_path: Path) -> Registry:
    """iris's champion, trained on the data set as it ships."""
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    data = tmp_path / "iris.csv"
    IRIS.to_csv(data, index=False)
    train(_spec(tmp_path, data), data.read_bytes(), registry, {})
    return registry


def _spec(tmp_path: Path, data: Path, **validation: Any) -> TrainingJobSpec:
    return parse_spec(TrainingJobSpec, {
        "dataset": {"uri": f"file://{data}", "target": "species", "validation": validation},
        "model": {"algorithm": "logisticRegression"},
        "output": {"registry": f"file://{tmp_path}/registry", "modelName": "iris"},
        "promote": {"alias": "champion"},
    })  # fmt: skip


def _rng() -> np.random.Generator:
    return np.random.default_rng(4)


def _vanished(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["petal_width_cm"])


def _added(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{SECRET: 1.0})


def _new_label(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(species=frame["species"].where(frame.index % 10 != 0, SECRET))


def _numbered_labels(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(species=frame["species"].map({"setosa": 0, "versicolor": 1, "virginica": 2}))


def _emptied(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(sepal_width_cm=frame["sepal_width_cm"].where(_rng().random(len(frame)) > 0.6))


def _tenth(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[::10]


def _two_classes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["species"] != "virginica"]


# (how the retrain's data changed, its rules, the failing check, what its message says)
FAILURES: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], dict[str, Any], str, str]] = [
    (_vanished, {}, "columns", "1 of ")
    , (_added, {}, "columns", "1 column(s) it does not take")
    , (_new_label, {}, "labels", "1 label(s) ")
    , (_numbered_labels, {}, "types", "labels of kind number")
    , (_emptied, {"maxMissingPercent": 20}, "maxMissingPercent", "'sepal_width_cm'")
    , (_tenth, {"minRows": 100}, "minRows", "15 labelled rows; at least 100 asked")
    , (lambda f: f, {"requiredColumns": ["region"]}, "requiredColumns", "missing: 'region'")
    , (lambda f: f, {"allowedLabels": ["setosa", "versicolor"]}, "allowedLabels", "50 rows carry 1 label(s)")
    , (_two_classes, {"maxLabelShiftPercent": 10}, "maxLabelShiftPercent", "33.3 points")
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "rules", "check", "says"), FAILURES, ids=[f[2] + str(i) for i, f in enumerate(FAILURES)]
)
def test_a_dataset_that_fails_a_check_trains_nothing(
    tmp_path: Path, champion: Registry, change: Callable[[pd.DataFrame], pd.DataFrame], rules: dict[str, Any],
    check: str, says: str,
) -> None:  # fmt: skip
    data = tmp_path / "retrain.csv"
    change(IRIS).to_csv(data, index=False)
    versions = champion.versions("iris")
    spec = _spec(tmp_path, data, **rules)
    log = tmp_path / "termination-log"
    status = run(json.dumps(spec.to_wire()), {"uid": "u-7"}, log)
    report = json.loads(log.read_text())
    assert status == 1 and report["reason"] == "DataValidationFailed", report
    failed = {c["check"]: c for c in report["validation"] if not c["passed"]}
    assert check in failed and says in failed[check]["message"], failed
    assert SECRET not in log.read_text()  # counts and the names the spec or the champion gave, never a cell
    assert champion.versions("iris") == versions  # nothing published
    assert champion.read_run("iris", "u-7")["validation"] == report["validation"]  # the run record says it too


def test_moved_data_is_reported_and_passes_without_rules(tmp_path: Path, champion: Registry) -> None:
    """A drift retrain is meant to see moved data: missing values and ranges are reported, not failed."""
    data = tmp_path / "moved.csv"
    moved = _emptied(IRIS).assign(petal_length_cm=IRIS["petal_length_cm"] * 3)
    moved.to_csv(data, index=False)
    result = train(_spec(tmp_path, data), data.read_bytes(), champion, {})
    checks = {c.check: c for c in result.validation}
    assert all(c.passed for c in checks.values())
    assert "+" in checks["missingValues"].message and "'sepal_width_cm'" in checks["missingValues"].message
    assert "'petal_length_cm'" in checks["ranges"].message
    meta = champion.metadata("iris", result.version)
    assert [c["check"] for c in meta["validation"]] == list(checks)
    assert meta["labelShares"] == pytest.approx({"setosa": 1 / 3, "versicolor": 1 / 3, "virginica": 1 / 3})


def test_a_reported_contract_lets_the_gate_decide(tmp_path: Path, champion: Registry) -> None:
    data = tmp_path / "retrain.csv"
    _vanished(IRIS).to_csv(data, index=False)
    with pytest.raises(TrainingError, match="columns: "):
        train(_spec(tmp_path, data), data.read_bytes(), champion, {})
    result = train(_spec(tmp_path, data, contract="Report"), data.read_bytes(), champion, {})
    assert result.gate is not None and result.gate.outcome == "Rejected" and "other features" in result.gate.message


def test_a_first_training_has_no_contract_but_the_rules(tmp_path: Path) -> None:
    data = tmp_path / "iris.csv"
    _tenth(IRIS).to_csv(data, index=False)
    registry = Registry(open_store(f"file://{tmp_path}/registry"))
    result = train(_spec(tmp_path, data), data.read_bytes(), registry, {})
    assert result.validation == []  # nothing to compare with, nothing asked
    with pytest.raises(TrainingError) as error:
        train(_spec(tmp_path, data, minRows=20), data.read_bytes(), registry, {})
    assert error.value.reason == "DataValidationFailed" and "minRows" in str(error.value)
