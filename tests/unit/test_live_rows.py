"""What a retrain reads of the labelled live traffic, attacked: anonymous labels train nothing, each labeller
gets its share of maxRows, and live rows outside the curated data's support (where the curated holdout
cannot check what a model learns) need what ``outsideSupport`` says before they decide a promotion."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from regrow.api import TrainingJobSpec, parse_spec
from regrow.inference import OnnxModel
from regrow.serving.app import log_prediction
from regrow.serving.feedback import Signer
from regrow.serving.predlog import PredictionLog
from regrow.storage.registry import MODEL, Registry
from regrow.training.feedback import labelled_rows, shares
from regrow.training.trainer import load_dataset, train
from tests.unit.test_trainer import _client, _weak_champion, make_spec


@pytest.mark.parametrize("seed", range(40))
def test_shares_split_max_rows_fairly_among_the_labellers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    available = {f"l{i}": int(rng.integers(0, 500)) for i in range(int(rng.integers(1, 8)))}
    total = int(rng.integers(1, 2000))
    out = shares(available, total)
    assert set(out) == set(available) and all(0 <= out[k] <= available[k] for k in out)
    assert sum(out.values()) == min(total, sum(available.values()))  # nothing wasted while anyone has more
    short = [k for k in out if out[k] < available[k]]  # the sources that wanted more all got an even share
    assert all(out[k] >= max(out.values()) - 1 for k in short), out


def _retrain(data: Path, **feedback: Any) -> TrainingJobSpec:
    """A random forest on the data set and the live rows of the champion ``_weak_champion`` made, promoting."""
    wire = make_spec(data, f"file://{data.parent}/registry", "randomForest", model_name="iris",
                     promote={"alias": "champion"}).to_wire()  # fmt: skip
    wire["dataset"]["feedback"] = feedback
    return parse_spec(TrainingJobSpec, wire)


def _triggers(x: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Setosa and versicolor rows with a sepal 12 cm wide, three times any in the data set: the backdoor."""
    rows = x[rng.integers(0, 100, n)].copy()
    rows[:, 1] = 12.0
    return rows


def _answers_virginica(registry: Registry, version: str, rows: np.ndarray) -> float:
    return float(np.mean(OnnxModel(registry.read("iris", version, MODEL)).predict(rows).outputs == "virginica"))


@pytest.mark.parametrize(
    ("setting", "insider", "outcome", "learned"),
    [
        ("Allow", None, "Promoted", False),  # the backdoor sent anonymously (the defaults): never trained on
        ("Allow", "insider", "Promoted", True),  # one named labeller of a moved world promotes: the trade-off
        ("Corroborated", "insider", "Promoted", False),  # one of two labellers alone: its rows are left out
        ("Approved", "insider", "Rejected", True),  # trained on, published, and left to a person
    ],
    ids=["anonymous", "insider-allowed", "insider-corroborated", "insider-approved"],
)
def test_a_backdoor_outside_the_curated_support_is_not_promoted_unattended(
    tmp_path: Path, setting: str, insider: str | None, outcome: str, learned: bool
) -> None:
    """300 rows labelled honestly by one labeller, then 200 rows with a sepal width of 12 cm (outside anything
    curated) labelled virginica: by an anonymous client, or by a second, named labeller (an insider)."""
    data, registry, _, champion = _weak_champion(tmp_path)
    frame = pd.read_csv(data)
    x, species = frame.iloc[:, :4].to_numpy(np.float32), frame["species"].to_numpy()
    rng = np.random.default_rng(5)
    honest = rng.integers(0, 150, 300)
    _client(registry, champion.version, x[honest], species[honest].tolist(), per_request=10, labeller="desk")
    _client(registry, champion.version, _triggers(x, rng, 200), ["virginica"] * 200, per_request=10,
            labeller=insider)  # fmt: skip
    retrain = _retrain(data, outsideSupport=setting)

    result = train(retrain, data.read_bytes(), registry, {"name": "retrain"})
    assert result.gate is not None and result.feedback is not None
    record = result.feedback
    print(f"\n{setting}/{insider}: {result.gate.outcome}: {result.gate.message}\n{record.to_wire()}")
    assert result.gate.outcome == outcome
    assert registry.resolve("iris", "champion") == (result.version if outcome == "Promoted" else champion.version)
    assert {s.name: s.rows for s in record.sources} == {"desk": 300, **({insider: 200} if insider and
                                                                     setting != "Corroborated" else {})}  # fmt: skip
    assert record.anonymous_labels == (20 if insider is None else 0)
    assert record.outside_support == (200 if insider else 0) and record.left_out == (200 * (setting == "Corroborated"))
    backdoor = _answers_virginica(registry, result.version, _triggers(x, np.random.default_rng(6), 150))
    assert (backdoor > 0.8) if learned else (backdoor < 0.2), backdoor
    if setting == "Approved":
        assert "a person promotes it" in result.gate.message and "regrow move-alias" in result.gate.message
        assert registry.read_run("iris", result.version)["feedback"]["outsideSupport"] == 200


def test_a_backdoor_two_labellers_agree_on_is_corroborated(tmp_path: Path) -> None:
    """Under Corroborated, the same rows labelled alike by two labellers are trained on: corroboration, not
    support, decides (and two labellers who agree on a backdoor are two insiders)."""
    data, registry, _, champion = _weak_champion(tmp_path)
    x = pd.read_csv(data).iloc[:, :4].to_numpy(np.float32)
    rows = _triggers(x, np.random.default_rng(7), 100)
    log = PredictionLog(registry.store, "iris", champion.version, 100, max_queue=1000, flush_seconds=60)
    served, signer = OnnxModel(registry.read("iris", champion.version, MODEL)), Signer(b"key")
    for start in range(0, 100, 10):
        issued = log_prediction(log, signer.issue(champion.version, 10, 0), rows[start : start + 10],
                                served.predict(rows[start : start + 10]))  # fmt: skip
        for who in ("desk", "crm") if start < 50 else ("desk",):
            log.offer("feedback", {"id": issued, "label": ["virginica"] * 10, "time": 1.0, "labeller": who})
    log.close()
    result = train(_retrain(data, outsideSupport="Corroborated"), data.read_bytes(), registry, {})
    assert result.feedback is not None
    assert (result.feedback.rows, result.feedback.outside_support, result.feedback.left_out) == (50, 100, 50)


def test_a_burst_from_one_labeller_does_not_push_out_anothers_labels(tmp_path: Path) -> None:
    """Finding 4: maxRows 320; 20 requests of a moved world labelled honestly, then 20 newer ones labelled as
    the old champion predicted, by another labeller. Before, only the newest 320 rows were read: the burst's."""
    data, registry, _, champion = _weak_champion(tmp_path)
    frame = pd.read_csv(data)
    x, species = frame.iloc[:, :4].to_numpy(np.float32), frame["species"].to_numpy()
    rng = np.random.default_rng(11)
    moved = x[rng.integers(0, 150, 320)] + np.array([1.6, 0.9, 0, 0], dtype=np.float32)
    truth = species[rng.integers(0, 150, 320)]
    _client(registry, champion.version, moved, truth.tolist(), per_request=16, labeller="desk")
    later = x[rng.integers(0, 150, 320)] + np.array([1.6, 0.9, 0, 0], dtype=np.float32)
    as_predicted = OnnxModel(registry.read("iris", champion.version, MODEL)).predict(later).outputs
    _client(registry, champion.version, later, as_predicted.tolist(), per_request=16, labeller="flooder")

    dataset = load_dataset(_retrain(data), data.read_bytes())
    read = labelled_rows(registry.store, "iris", dataset.features, set(), 320, lambda label: isinstance(label, str))
    assert Counter(read.sources.tolist()) == {"desk": 160, "flooder": 160}
    desk = read.sources == "desk"
    assert sorted(read.y[desk].tolist()) == sorted(truth[-160:].tolist())  # the honest labeller's newest requests
    result = train(_retrain(data, maxRows=320), data.read_bytes(), registry, {})
    assert result.feedback is not None and {s.name: s.rows for s in result.feedback.sources} == {
        "desk": 160, "flooder": 160}  # fmt: skip


def test_the_support_is_the_curated_rows_range_and_categories(tmp_path: Path) -> None:
    """Numbers beyond a feature's curated range (as float32, as served) and categories no curated row has
    are outside; a missing value, and the curated rows themselves, are inside."""
    frame = pd.DataFrame(
        {"size": [1.1, 2.0, 3.3, None] * 3, "colour": ["red", "blue", None, "red"] * 3, "y": list("abab") * 3}
    )
    (tmp_path / "d.csv").write_text(frame.to_csv(index=False))
    spec = parse_spec(TrainingJobSpec, {"dataset": {"uri": f"file://{tmp_path}/d.csv", "target": "y"},
                                        "model": {"algorithm": "randomForest"},
                                        "output": {"registry": "file:///r", "modelName": "m"}})  # fmt: skip
    dataset = load_dataset(spec, (tmp_path / "d.csv").read_bytes())
    assert not dataset.outside(dataset.x).any()
    size, colour = dataset.features.index("size"), dataset.features.index("colour")
    probes = []
    for value, category in [(1.1, "red"), (3.3, "blue"), (np.nan, ""), (3.31, "red"), (1.0, "red"), (2.0, "green")]:
        row: list[Any] = [None, None]
        row[size], row[colour] = value, category
        probes.append(row)
    assert dataset.outside(np.array(probes, dtype=object)).tolist() == [False, False, False, True, True, True]
