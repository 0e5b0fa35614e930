"""Ground truth in bulk: label files in the store, by prediction id or by the business key a request carried,
trusted as the store is and outranking any labeller; and the business key as a request gives it, checked,
and logged as its hash."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from regrow.contracts import business_key_hash
from regrow.serving.protocol import BadRequest, business_keys
from regrow.storage import open_store
from regrow.training.feedback import labelled_rows
from regrow.training.trainer import train
from regrow.training.truth import STORE, read_truth
from tests.unit.test_server import local, publish_iris, running, v2, wait_ready
from tests.unit.test_trainer import _client, _weak_champion

FEATURES = ["a", "b", "c", "d"]


def _fits(label: object) -> bool:
    return isinstance(label, str)


def _prediction(pid: str, rows: int, keys: list[str] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": pid, "time": 1, "inputs": [[5.0 + i, 3.0, 1.5, 0.2] for i in range(rows)],
                              "outputs": ["setosa"] * rows}  # fmt: skip
    if keys is not None:
        record["keys"] = [business_key_hash(k) for k in keys]
    return record


def _store(tmp_path: Path, predictions: list[dict[str, Any]], labels: list[dict[str, Any]]) -> Any:
    store = open_store(f"file://{tmp_path}/registry")
    store.put("iris/predictions/v1/20261207T000000Z-h-000001.jsonl",
              "".join(json.dumps(r) + "\n" for r in predictions).encode())  # fmt: skip
    store.put("iris/feedback/v1/i/20261207T000001Z-h-000001.jsonl",
              "".join(json.dumps(r) + "\n" for r in labels).encode())  # fmt: skip
    return store


def test_the_store_labels_rows_by_id_or_business_key_and_outranks_a_labeller(tmp_path: Path) -> None:
    store = _store(
        tmp_path,
        [_prediction("p1", 2), _prediction("p2", 1, ["00123"]), _prediction("p3", 2, ["k-a", "k-b"]),
         _prediction("p4", 1)],
        [{"id": "p1", "label": ["setosa", "setosa"], "time": 1, "labeller": "crm"},
         {"id": "p4", "label": "setosa", "time": 1, "labeller": "crm"}],
    )  # fmt: skip
    store.put("iris/labels/warehouse-2026-12-07.csv", b"prediction_id,row,business_key,label\n"
              b"p1,1,,virginica\n,,00123,versicolor\n,,k-b,virginica\nnobody,0,,setosa\n,,,orphan\n")  # fmt: skip
    frame = pd.DataFrame({"business_key": ["k-a"], "label": ["versicolor"]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    store.put("iris/labels/desk.parquet", buffer.getvalue())
    store.put("iris/labels/broken.csv", b"\x00\x01 not, a\nlabel file")
    read = labelled_rows(store, "iris", FEATURES, set(), 100, _fits)
    got = sorted(zip(read.groups.tolist(), read.x[:, 0].tolist(), read.y.tolist(), read.sources.tolist(), strict=True))
    assert got == [
        ("p1", 5.0, "setosa", "crm"),  # the labeller's, for the row the store does not label
        ("p1", 6.0, "virginica", STORE),  # the store's, over the labeller's
        ("p2", 5.0, "versicolor", STORE),  # by its business key, leading zeros and all
        ("p3", 5.0, "versicolor", STORE),  # each row by its own key, from a Parquet file and a CSV file
        ("p3", 6.0, "virginica", STORE),
        ("p4", 5.0, "setosa", "crm"),
    ]
    by_id = (read.sources == STORE) & (read.groups == "p1")  # the store chose the prediction: corroborated
    assert read.corroborated[by_id].all() and not read.corroborated[(read.sources == STORE) & ~by_id].any()
    assert read.dropped == {"unreadable_file": 1, "label_row": 1}


def test_a_store_label_of_the_wrong_kind_is_left_out_and_the_labellers_stands(tmp_path: Path) -> None:
    store = _store(tmp_path, [_prediction("p1", 1)], [{"id": "p1", "label": "setosa", "time": 1, "labeller": "crm"}])
    store.put("iris/labels/numbers.csv", b"prediction_id,label\np1,7\n")
    read = labelled_rows(store, "iris", FEATURES, set(), 100, _fits)
    assert read.y.tolist() == ["setosa"] and read.sources.tolist() == ["crm"] and read.dropped == {"label": 1}


def test_a_flood_of_store_labels_does_not_push_out_a_labellers(tmp_path: Path) -> None:
    """The store is a source with its share of maxRows like any labeller."""
    predictions = [_prediction(f"s{i}", 1, [f"k{i}"]) for i in range(50)] + [_prediction("h", 1)]
    store = _store(tmp_path, predictions, [{"id": "h", "label": "setosa", "time": 1, "labeller": "desk"}])
    store.put(
        "iris/labels/bulk.csv", ("business_key,label\n" + "".join(f"k{i},virginica\n" for i in range(50))).encode()
    )
    read = labelled_rows(store, "iris", FEATURES, set(), 10, _fits)
    assert sorted(read.sources.tolist()) == sorted(["desk"] + [STORE] * 9)


def test_label_files_are_bounded_and_a_missing_folder_is_none(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/registry")
    assert len(read_truth(store, "iris")) == 0 and not read_truth(store, "iris").dropped
    store.put("iris/labels/a.csv", b"prediction_id,label\np1,setosa\n")
    store.put("iris/labels/b.csv", b"prediction_id,label\np1,virginica\n")  # the later file's wins
    assert read_truth(store, "iris").label("p1", 0, None) == ("id", "virginica")


def test_a_business_key_labels_one_row_however_many_requests_carry_it(tmp_path: Path) -> None:
    """Any client may send any key: one that learned a labelled key and repeats it on made-up inputs gets the
    store's label on one row, not on every request."""
    flood = [_prediction(f"f{i}", 1, ["fraud-case-1"]) for i in range(20)]
    store = _store(tmp_path, flood, [])
    store.put("iris/labels/desk.csv", b"business_key,label\nfraud-case-1,virginica\n")
    read = labelled_rows(store, "iris", FEATURES, set(), 1000, _fits)
    assert read.groups.tolist() == ["f19"] and read.predictions == 20  # the newest logged row alone


def test_a_label_file_of_odd_cells_is_read_as_far_as_it_can_be(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/registry")
    for name, labels in (("lists", [["a", "b"], ["c"]]), ("texts", ["NA", None])):
        buffer = io.BytesIO()
        pd.DataFrame({"prediction_id": [f"{name}-1", f"{name}-2"], "label": labels}).to_parquet(buffer)
        store.put(f"iris/labels/{name}.parquet", buffer.getvalue())
    store.put("iris/labels/na.csv", b"prediction_id,row,label\np4,,NA\np5,x,setosa\np6,1,\n")
    truth = read_truth(store, "iris")
    assert truth.by_id == {("texts-1", 0): "NA", ("p4", 0): "NA"}  # a class called NA is a class
    assert truth.dropped == {"label_row": 5}  # two lists, no label (twice), a row that is no index


@pytest.mark.parametrize(
    ("given", "rows", "expected"),
    [
        (None, 3, None),
        ("order-1", 1, ["order-1"]),
        (["a", "b"], 2, ["a", "b"]),
        ("order-1", 2, BadRequest),  # one string for a request of two rows
        (["a"], 2, BadRequest),
        (["a", 7], 2, BadRequest),
        ([""], 1, BadRequest),
        ("x" * 257, 1, BadRequest),
        ({"k": "v"}, 1, BadRequest),
        (12345, 1, BadRequest),
    ],
)
def test_a_business_key_is_one_bounded_string_per_row(given: Any, rows: int, expected: Any) -> None:
    body = {"inputs": [], **({"parameters": {"business_key": given}} if given is not None else {})}
    if expected is BadRequest:
        with pytest.raises(BadRequest, match=r"parameters\.business_key must be") as error:
            business_keys(body, rows)
        assert error.value.status == 400 and (not isinstance(given, str) or given not in str(error.value))
    else:
        assert business_keys(body, rows) == expected


def test_the_server_logs_a_requests_business_keys_by_their_hashes(tmp_path: Path) -> None:
    version = publish_iris(tmp_path)
    config = local(tmp_path, version=version, log_percent=100, log_flush_seconds=0.2, feedback_key="k" * 32)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    with running(config) as server:
        wait_ready(server)
        assert (
            server.call("POST", "/v2/models/iris/infer", v2(rows, parameters={"business_key": ["c-1", "c-2"]}))[0]
            == 200
        )
        bad = server.call("POST", "/v2/models/iris/infer", v2(rows, parameters={"business_key": "c-1"}))
        assert bad[0] == 400 and "one such string per row (2)" in bad[1]["error"]
        deadline = time.monotonic() + 10
        while not (logged := list((tmp_path / "registry/iris/predictions").rglob("*.jsonl"))):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    (record,) = [json.loads(line) for f in logged for line in f.read_text().splitlines()]
    assert record["keys"] == [business_key_hash("c-1"), business_key_hash("c-2")]
    assert "c-1" not in json.dumps(record) and np.array(record["inputs"]).shape == (2, 4)


def test_a_retrain_learns_the_moved_world_from_the_warehouses_labels_alone(tmp_path: Path) -> None:
    """The clients label nothing a retrain may use (anonymously); a warehouse join writes the truth of every
    logged row, by prediction id and row, and the retrain trains on it and is promoted."""
    data, registry, retrain, champion = _weak_champion(tmp_path)
    frame = pd.read_csv(data)
    x, species = frame.iloc[:, :4].to_numpy(np.float32), frame["species"].to_numpy()
    picks = np.random.default_rng(3).integers(0, 150, 240)
    moved = x[picks] + np.array([1.6, 0.9, 0, 0], dtype=np.float32)
    _client(registry, champion.version, moved, species[picks].tolist(), per_request=2, labeller=None)
    records = [json.loads(line) for key in registry.store.list("iris/predictions/")
               for line in registry.store.get(key).decode().splitlines()]  # fmt: skip
    truth = {tuple(row): label for row, label in zip(moved.tolist(), species[picks].tolist(), strict=True)}
    lines = [f"{r['id']},{i},{truth[tuple(np.float32(v).item() for v in row)]}"
             for r in records for i, row in enumerate(r["inputs"])]  # fmt: skip
    registry.store.put("iris/labels/join.csv", ("prediction_id,row,label\n" + "\n".join(lines)).encode())
    result = train(retrain, data.read_bytes(), registry, {"name": "retrain"})
    assert result.feedback is not None and result.gate is not None
    assert [(s.name, s.rows) for s in result.feedback.sources] == [(STORE, 240)]
    assert result.feedback.anonymous_labels == 120 and result.gate.outcome == "Promoted", result.gate.message
