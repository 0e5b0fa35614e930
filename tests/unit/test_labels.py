"""Each label graded once, by the process that issued its id, from the labels any pod wrote to the store: the
property over any sequence of labels, replays and repeats, and two pods sharing a store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.api.modeldeployment import CanaryAnalysis, GateStatus
from regrow.contracts import Graded, log_key
from regrow.controller import canary
from regrow.drift.profile import PREDICTION, FeatureProfile
from regrow.serving.feedback import Signer
from regrow.serving.labels import LabelBook, LabelReader, feedback_folder
from regrow.serving.predlog import PredictionLog
from regrow.storage import FileStore

SIGNER = Signer(b"k" * 32)
SPECIES = ["setosa", "versicolor", "virginica"]
CLASSES = FeatureProfile(PREDICTION, (), (10, 10, 10), tuple(SPECIES))
NOW = 1_800_000_000


def _ids(count: int, issuer: str = "a") -> list[str]:
    """Ids of one-row predictions of setosa, the i-th issued at NOW + i."""
    return [SIGNER.issue("v1", 1, NOW + i, ["setosa"], issuer) for i in range(count)]


EVENTS = st.lists(st.tuples(st.integers(0, 7), st.sampled_from(SPECIES), st.integers(0, 5)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.integers(0, 8), st.integers(1, 9))
def test_each_id_counts_once_with_its_latest_label(events: list[tuple[int, str, int]], since: int, most: int) -> None:
    """Over any labels of eight ids (each posted any number of times, in any order of acceptance), the quality
    of the ids issued since a time is each such id's latest label graded once (among labels accepted at the
    same time, the last read); the counters hold each id's first label. With room for fewer ids, the earliest
    issued are forgotten and never graded again, and the answer says it is incomplete."""
    ids = _ids(8)
    book = LabelBook("iris", True, most)
    latest: dict[int, tuple[int, str]] = {}
    first: dict[int, str] = {}
    kept: dict[int, str] = {}
    for i, label, when in events:
        book.add(SIGNER.verify(ids[i], NOW), label, NOW + when)
        if i not in latest or latest[i][0] <= NOW + when:
            latest[i] = (NOW + when, label)
        first.setdefault(i, label)
    for i in sorted(latest)[-most:]:  # forgotten first: the earliest issued (ids are issued in order)
        kept[i] = latest[i][1]
    quality = book.quality(NOW + since)
    counted = {i: label for i, label in kept.items() if i >= since}
    expected = Graded(ids=len(counted), rows=len(counted), graded=sum(v == "setosa" for v in counted.values()))
    assert quality.versions.get("v1", Graded(ids=0, rows=0, graded=0)) == expected
    assert quality.complete == (len(latest) <= most or since > sorted(latest)[-most - 1])
    samples = {s.name: s.value for f in book.collect() for s in f.samples}
    if len(latest) <= most:  # nothing forgotten, nothing refused
        assert samples.get("regrow_feedback_labelled_rows_total", 0) == len(first)
        assert samples.get("regrow_feedback_correct_rows_total", 0) == sum(v == "setosa" for v in first.values())


def test_a_replay_of_a_forgotten_id_is_not_graded_again() -> None:
    ids = _ids(3)
    book = LabelBook("iris", True, most=2)
    for token in ids:
        assert book.add(SIGNER.verify(token, NOW), "virginica", NOW + 10)
    assert not book.add(SIGNER.verify(ids[0], NOW), "setosa", NOW + 20)  # forgotten: refused, not counted anew
    assert book.quality(NOW).versions["v1"] == Graded(ids=2, rows=2, graded=0)


def _post(log: PredictionLog, tokens: list[str], label: str, when: float) -> None:
    """What a pod does with labels it accepted: write each in its id's issuer's folder."""
    records = [(feedback_folder(SIGNER.verify(t, when)), {"id": t, "label": label, "time": when}) for t in tokens]
    assert log.offer_all("feedback", records)
    log.flush()


def test_the_issuer_grades_its_ids_whichever_pod_took_the_label(tmp_path: Path) -> None:
    """Two pods share the store: each writes what it accepts, and each grades only the ids it issued, once,
    whichever pod took their labels and however often; labels of ids issued before a time are left out of the
    quality since then."""
    store = FileStore(tmp_path)
    now = time.time()
    pods = {name: LabelReader(store, "iris", "v1", True, SIGNER, name) for name in ("a", "b")}
    logs = {name: PredictionLog(store, "iris", "v1", 100, 1000, flush_seconds=3600) for name in pods}
    mine = [SIGNER.issue("v1", 1, now - 60 + i, ["setosa"], "a") for i in range(4)]
    theirs = [SIGNER.issue("v1", 2, now, ["setosa", "virginica"], "b")]
    _post(logs["b"], mine[:2], "setosa", now)  # a's ids, labelled through b
    _post(logs["a"], mine[:2] * 3 + theirs, "virginica", now + 1)  # replays, relabelled later; and one of b's
    _post(logs["b"], mine[2:], "setosa", now + 2)
    _post(logs["b"], [mine[3]], "setosa", now + 3)  # the same label again: nothing changes
    changed = {name: reader.read(now + 5) for name, reader in pods.items()}
    assert changed["a"] >= 4 and changed["b"] == 0  # b's id got one label for two rows: not what a pod writes
    assert {key.split("/")[3] for key in store.list("iris/feedback/v1/")} == {"a", "b"}  # each issuer's own
    assert pods["a"].book.quality(0).versions == {"v1": Graded(ids=4, rows=4, graded=2)}
    assert pods["a"].book.quality(int(now - 58)).versions == {"v1": Graded(ids=2, rows=2, graded=2)}
    assert pods["b"].book.quality(0).versions == {}
    assert pods["a"].read(now + 10) == 0  # read once
    for log in logs.values():
        log.close()


def test_the_reader_looks_only_at_files_named_since_its_last_look(tmp_path: Path) -> None:
    """It lists from its last look, less a margin for late writers: a file named long before is not read."""
    store = FileStore(tmp_path)
    reader = LabelReader(store, "iris", "v1", True, SIGNER, "a")
    token = _ids(1)[0]
    line = json.dumps({"id": token, "label": "setosa", "time": NOW}).encode()
    store.put("iris/feedback/v1/a/20200101T000000Z-old-000001.jsonl", line)  # named years before the reader began
    assert reader.read(time.time()) == 0
    store.put(log_key("iris", "feedback", "v1/a", time.time(), "new", 1), line)
    assert reader.read(time.time()) == 1 and reader.book.quality(0).versions["v1"].ids == 1


def _gate(candidate: LabelBook, stable: LabelBook, since: int) -> GateStatus:
    """The quality gate of a step begun at ``since``, on the two versions' pods' quality answers."""
    analysis = CanaryAnalysis(max_prediction_divergence=None, max_quality_drop="0.05", min_labels=50)
    vectors = []
    for version, book in (("v2", candidate), ("v1", stable)):
        vector = np.zeros(canary.size(CLASSES), dtype=np.int64)
        vector[canary.ANSWERED] = 1000
        answer = book.quality(since).model_dump_json().encode()
        vector[[canary.LABELLED, canary.GRADED]] = canary.graded([answer], version, classifier=True)
        vectors.append(vector)
    return canary.gates(analysis, vectors[0], vectors[1], canary.Predictions(CLASSES, CLASSES))[-1]


@pytest.mark.parametrize("candidate_right", [0.47, 0.95])
def test_replays_and_ids_from_before_the_step_flip_no_quality_gate(candidate_right: float) -> None:
    """Finding 1 of the labels issue: honest labels grade a bad candidate (47% right beside 95%) or a good one;
    a client then posts, in bulk, the labels that would flip the gate: two ids of each version, each 60 times
    (the candidate's as it predicted, the stable version's wrong), and 300 stable ids it gathered before the
    step, labelled wrong. Each id counts once and only those issued inside the step count: the gate says what
    the honest labels say."""
    rng = np.random.default_rng(7)
    books = {"v2": LabelBook("iris", True), "v1": LabelBook("iris", True)}
    step = NOW + 1000
    for version, right in (("v2", candidate_right), ("v1", 0.95)):
        for i in range(100):
            claims = SIGNER.verify(SIGNER.issue(version, 1, step + i, ["setosa"], version), step + i)
            books[version].add(claims, "setosa" if rng.random() < right else "virginica", step + 200)
    for version, label in (("v2", "setosa"), ("v1", "virginica")):
        for i in range(2):
            claims = SIGNER.verify(SIGNER.issue(version, 1, step + 300 + i, ["setosa"], version), step + 400)
            for replay in range(60):
                books[version].add(claims, label, step + 400 + replay)
    for i in range(300):
        claims = SIGNER.verify(SIGNER.issue("v1", 1, NOW + i, ["setosa"], "v1"), step + 500)
        books["v1"].add(claims, "virginica", step + 500)
    gate = _gate(books["v2"], books["v1"], step)
    assert gate.passed is (candidate_right > 0.9), gate
    assert books["v1"].quality(step).versions["v1"].ids == 102  # 100 honest, 2 replayed: once each
