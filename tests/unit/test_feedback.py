"""Feedback that cannot be forged or flooded: server-signed prediction ids, labels checked against the model,
all-or-nothing batches, and a feedback queue of its own."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regrow.contracts import LOG_KINDS, Graded, log_key
from regrow.serving.feedback import (
    MAX_AGE_SECONDS,
    MAX_ITEMS,
    Recent,
    Rejected,
    Share,
    Signer,
    check_label,
    parse_feedback,
)
from regrow.serving.labels import LabelBook
from regrow.serving.predlog import PredictionLog
from regrow.storage import FileStore
from tests.helpers import HangingStore

SIGNER = Signer(b"the deployment's key")
NOW = 1_800_000_000.0
SPECIES = ["setosa", "versicolor", "virginica"]
SECRET = "s3cr3t-in-a-label"


def issued(rows: int = 1, version: str = "v1", at: float = NOW) -> str:
    return SIGNER.issue(version, rows, at)


def _tampered_payload(token: str) -> str:
    prefix, payload, tag = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body[1] = 500  # claim more rows
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{tag}"


def _tampered_tag(token: str) -> str:
    prefix, payload, tag = token.split(".")
    middle = len(tag) // 2
    return f"{prefix}.{payload}.{tag[:middle]}{'B' if tag[middle] == 'A' else 'A'}{tag[middle + 1 :]}"


FORGED: dict[str, Any] = {
    "made up": "4f1c2a9e0b7d",
    "the client's own request id": "req-1",
    "a uuid": "0b5f0c3e-8a57-4d6e-9a4f-8c1d2e3f4a5b",
    "another deployment's": Signer(b"another key").issue("v1", 1, NOW),
    "payload tampered": _tampered_payload(issued()),
    "tag tampered": _tampered_tag(issued()),
    "tag cut": issued()[:-4],
    "prefix changed": "rg2" + issued()[3:],
    "non-ascii tag": issued()[:-1] + "é",
    "overlong": issued() + "x" * 600,
    "empty": "",
    "a number": 12345,
    "null": None,
    "a list": [issued()],
    "an object": {"id": issued()},
    "true": True,
}


@pytest.mark.parametrize("token", list(FORGED.values()), ids=list(FORGED))
def test_an_id_the_server_did_not_issue_is_refused(token: Any) -> None:
    with pytest.raises(Rejected) as error:
        SIGNER.verify(token, NOW)
    assert error.value.reason == "bad_id"


def test_an_issued_id_verifies_on_any_replica_until_it_expires() -> None:
    token = issued(rows=3, version="v7")
    replica = Signer(b"the deployment's key")  # another pod, same Secret
    claims = replica.verify(token, NOW + 3600)
    assert (claims.version, claims.rows, claims.issued) == ("v7", 3, int(NOW))
    assert issued() != issued()  # a nonce: two predictions never share an id
    with pytest.raises(Rejected) as error:
        replica.verify(token, NOW + MAX_AGE_SECONDS + 1)
    assert error.value.reason == "expired"


def test_after_a_rotation_ids_of_the_key_before_still_verify_and_new_ones_use_the_new_key() -> None:
    old, new = b"the key before the rotation, 32+ bytes", b"the key after the rotation, 32+ bytes"
    before = Signer(old).issue("v1", 1, NOW)
    rotated = Signer.from_env(new.decode(), old.decode())
    assert rotated.keys == (new, old) and rotated.verify(before, NOW).version == "v1"
    after = rotated.issue("v2", 1, NOW)
    assert Signer(new).verify(after, NOW).version == "v2"  # signed with the new key alone
    with pytest.raises(Rejected):
        Signer(old).verify(after, NOW)  # a pod that has not rolled yet refuses it: the roll is short
    with pytest.raises(Rejected):
        Signer(new, b"another key entirely, 32+ bytes!!").verify(before, NOW)  # revoked: gone with its Secret


LABELS: list[tuple[list[Any] | None, int, Any, bool]] = [
    # (classes; None for a regressor), rows, label, accepted
    (SPECIES, 1, "setosa", True),
    (SPECIES, 1, ["virginica"], True),
    (SPECIES, 2, ["setosa", "versicolor"], True),
    (SPECIES, 1, "virginica ", False),
    (SPECIES, 1, "Setosa", False),
    (SPECIES, 1, 1, False),
    (SPECIES, 1, True, False),
    (SPECIES, 1, None, False),
    (SPECIES, 1, {"label": "setosa"}, False),
    (SPECIES, 1, [["setosa"]], False),
    (SPECIES, 1, "x" * 2_000_000, False),
    (SPECIES, 2, "setosa", False),  # one label for two rows
    (SPECIES, 2, ["setosa"], False),
    (SPECIES, 2, ["setosa", "setosa", "setosa"], False),
    (SPECIES, 2, ["setosa", 2], False),  # an int among strings
    (SPECIES, 1, [], False),
    ([0, 1, 2], 1, 1, True),
    ([0, 1, 2], 1, 3, False),
    ([0, 1, 2], 1, "1", False),
    ([0, 1, 2], 1, 1.0, False),
    ([0, 1, 2], 1, True, False),  # a boolean is not the class 1
    ([True, False], 1, True, True),
    ([True, False], 1, 1, False),
    (None, 1, 3.25, True),
    (None, 1, -7, True),
    (None, 3, [1.5, 2, -0.5], True),
    (None, 1, "3.25", False),
    (None, 1, False, False),
    (None, 1, None, False),
    (None, 1, float("inf"), False),
    (None, 1, float("nan"), False),
    (None, 2, [1.0, "2"], False),
]


@pytest.mark.parametrize(("classes", "rows", "label", "accepted"), LABELS)
def test_only_labels_the_model_can_have(classes: list[Any] | None, rows: int, label: Any, accepted: bool) -> None:
    if accepted:
        check_label(label, classes, rows)
        return
    with pytest.raises(Rejected) as error:
        check_label(label, classes, rows)
    assert error.value.reason == "bad_label"


def test_a_batch_is_accepted_whole_or_refused_naming_its_first_bad_item() -> None:
    good: list[dict[str, Any]] = [
        {"id": issued(), "label": "setosa"},
        {"id": issued(2, "v2"), "label": ["virginica", "setosa"]},
    ]
    accepted = parse_feedback({"feedback": good}, SIGNER, SPECIES, NOW)
    assert [(a.claims.version, a.record["label"]) for a in accepted] == [
        ("v1", "setosa"),
        ("v2", ["virginica", "setosa"]),
    ]
    assert accepted[0].record == {"id": good[0]["id"], "label": "setosa", "time": NOW}
    bad_items = [
        ({"id": "forged", "label": "setosa"}, "bad_id"),
        ({"id": issued(), "label": SECRET}, "bad_label"),
        ({"id": issued(), "label": "setosa", "extra": SECRET}, "bad_request"),
        ({"id": issued()}, "bad_request"),
        ("setosa", "bad_request"),
    ]
    for bad, reason in bad_items:
        with pytest.raises(Rejected) as error:
            parse_feedback({"feedback": [*good, bad, {"id": "also forged", "label": 1}]}, SIGNER, SPECIES, NOW)
        assert error.value.reason == reason
        assert str(error.value).startswith("feedback[2]: ") and SECRET not in str(error.value)
    single = parse_feedback({"id": issued(), "label": "versicolor"}, SIGNER, SPECIES, NOW)
    assert len(single) == 1
    with pytest.raises(Rejected, match=r"^feedback: "):
        parse_feedback({"id": issued(), "label": "rose"}, SIGNER, SPECIES, NOW)


@pytest.mark.parametrize("body", [[], {"feedback": []}, {"feedback": "x"}, {"feedback": None}, 7, "id", None])
def test_malformed_feedback_is_a_bad_request(body: Any) -> None:
    with pytest.raises(Rejected) as error:
        parse_feedback(body, SIGNER, SPECIES, NOW)
    assert error.value.reason == "bad_request"


def test_a_request_holds_a_bounded_number_of_items() -> None:
    items = [{"id": issued(), "label": "setosa"} for _ in range(MAX_ITEMS + 1)]
    with pytest.raises(Rejected) as error:
        parse_feedback({"feedback": items}, SIGNER, SPECIES, NOW)
    assert error.value.reason == "too_many_items"
    assert len(parse_feedback({"feedback": items[:MAX_ITEMS]}, SIGNER, SPECIES, NOW)) == MAX_ITEMS


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(SPECIES)), min_size=1, max_size=60))
def test_an_id_given_many_times_in_a_batch_is_one_item_with_its_last_label(picks: list[tuple[int, str]]) -> None:
    """However often each id repeats, and in whatever order: one item per id, with its last label, in the order
    of the last items (a thousand replays of one id are one label)."""
    ids = [issued() for _ in range(5)]
    out = parse_feedback({"feedback": [{"id": ids[i], "label": label} for i, label in picks]}, SIGNER, SPECIES, NOW)
    last: dict[int, str] = {}
    for i, label in picks:
        last.pop(i, None)
        last[i] = label
    assert [(item.record["id"], item.record["label"]) for item in out] == [(ids[i], label) for i, label in last.items()]


def test_a_label_accepted_lately_is_a_repeat_neither_checked_nor_written_again() -> None:
    """Replaying a batch across requests costs a hash per item: the same id with the same label is left out
    (counted as repeated), a new label for it is news, and the memory keeps the latest ``most`` ids."""
    recent, ids = Recent(most=2), [issued() for _ in range(3)]
    first = parse_feedback({"feedback": [{"id": i, "label": "setosa"} for i in ids[:2]]}, SIGNER, SPECIES, NOW,
                           recent=recent)  # fmt: skip
    recent.remember(first)
    again = [{"id": ids[0], "label": "setosa"}, {"id": ids[1], "label": "virginica"}, {"id": "forged", "label": 1}]
    with pytest.raises(Rejected):  # a repeat is left out unchecked; anything else is checked as ever
        parse_feedback({"feedback": again}, SIGNER, SPECIES, NOW, recent=recent)
    news = parse_feedback({"feedback": again[:2]}, SIGNER, SPECIES, NOW, recent=recent)
    assert [item.record["label"] for item in news] == ["virginica"] and recent.repeated == 2
    recent.remember(news)
    recent.remember(parse_feedback({"id": ids[2], "label": "setosa"}, SIGNER, SPECIES, NOW, recent=recent))
    assert len(parse_feedback({"id": ids[0], "label": "setosa"}, SIGNER, SPECIES, NOW, recent=recent)) == 1  # forgotten


def test_feedback_is_shed_once_it_has_taken_its_share_of_the_loop() -> None:
    """Over about a second, feedback may take a quarter of the event loop; past it, it is shed until what it
    took has decayed, so that a flood of any feedback leaves inference the rest."""
    now = [0.0]
    share = Share(0.25, 1.0, clock=lambda: now[0])
    for _ in range(3):
        assert not share.exhausted()
        share.charge(0.12)
        now[0] += 0.1
    assert share.exhausted()  # 0.36 s taken in the last 0.3 s, decayed a little: past 0.25
    now[0] += 0.5
    assert not share.exhausted()  # decayed below it
    share.charge(10.0)  # one request that took ten seconds
    now[0] += 3.0
    assert share.exhausted()
    now[0] += 4.0
    assert not share.exhausted()


def test_an_id_issued_in_the_future_is_refused() -> None:
    """Only a holder of the key can date an id: one dated ahead (beyond a minute's clock skew between pods)
    would never expire, so it is refused."""
    assert SIGNER.verify(issued(at=NOW + 30), NOW).issued == int(NOW + 30)  # skew between pods
    for ahead in (120, 2100 * 365 * 86400):
        with pytest.raises(Rejected) as error:
            SIGNER.verify(issued(at=NOW + ahead), NOW)
        assert error.value.reason == "future"


def test_predictions_cannot_crowd_out_feedback() -> None:
    """Each queue is bounded in records and in bytes: a flood of logged predictions fills its own queue,
    and feedback still fits in its own; a batch that does not fit is not queued at all."""

    store = HangingStore()
    log = PredictionLog(store, "iris", "v1", 100, max_queue=100_000, flush_seconds=0.05, max_bytes=20_000)  # type: ignore[arg-type]
    time.sleep(0.1)  # the writer waits on the store from now on
    row = {"id": issued(), "inputs": [[5.1, 3.5, 1.4, 0.2]] * 10, "outputs": ["setosa"] * 10}
    flood = sum(log.offer("predictions", row) for _ in range(1000))
    assert flood < 1000 and log.counts[("predictions", "dropped")] == 1000 - flood
    label = ("v1", {"id": issued(), "label": "setosa", "time": NOW})
    assert log.offer_all("feedback", [label] * 50)
    too_big = [label] * 1000
    assert not log.offer_all("feedback", too_big)
    assert log.counts[("feedback", "queued")] == 50 and log.counts[("feedback", "dropped")] == 1000
    store.released.set()
    log.close()
    assert log.counts[("feedback", "written")] == 50


def test_an_id_carries_its_predictions_when_short_and_labels_grade_them_per_version() -> None:
    short = SIGNER.issue("v2", 2, NOW, ["setosa", "virginica"])
    assert SIGNER.verify(short, NOW).predicted == ("setosa", "virginica")
    assert SIGNER.verify(SIGNER.issue("v2", 17, NOW, ["setosa"] * 17), NOW).predicted is None  # too many rows
    assert SIGNER.verify(SIGNER.issue("v2", 1, NOW, ["x" * 600]), NOW).predicted is None  # too long an id
    assert SIGNER.verify(issued(), NOW).predicted is None  # an id made without them still verifies
    book = LabelBook("iris", classifier=True)
    for item in parse_feedback({"feedback": [{"id": short, "label": ["setosa", "versicolor"]},
                                             {"id": issued(), "label": "setosa"}]}, SIGNER, SPECIES, NOW):  # fmt: skip
        book.add(item.claims, item.record["label"], NOW)
    assert book.quality(0).versions["v2"] == Graded(ids=1, rows=2, graded=1)  # one of two right
    assert book.quality(0).versions["v1"] == Graded(ids=1, rows=0, graded=0)  # its id says no prediction
    regressor = LabelBook("house", classifier=False)
    for label, predicted in ((3.0, 2.5), (1.0, 2.0), (1.0, [1.0, 2.0])):  # two outputs: not graded
        (item,) = parse_feedback({"id": SIGNER.issue("r1", 1, NOW, [predicted]), "label": label}, SIGNER, None, NOW)
        regressor.add(item.claims, item.record["label"], NOW)
    assert regressor.quality(0).versions["r1"] == Graded(ids=3, rows=2, graded=1.5)
    text = "".join(f"{s.name} {s.labels} {s.value}\n" for f in book.collect() for s in f.samples)
    assert "regrow_feedback_correct_rows_total {'model': 'iris', 'version': 'v2'} 1" in text


def test_the_log_deletes_its_models_files_past_the_retention(tmp_path: Path) -> None:
    """Every version's predictions and labels older than the retention go, by the time in their names; newer
    ones, other models' and files that are no log's stay."""
    store, now = FileStore(tmp_path), time.time()
    old = [log_key("iris", kind, version, now - 3 * 86400, "h", 1) for kind in LOG_KINDS for version in ("v1", "v0")]
    kept = [log_key("iris", "feedback", "v1", now - 3600, "h", 2), log_key("wine", "feedback", "v1", now - 9e6, "h", 3),
            "iris/feedback/v1/notes.jsonl"]  # fmt: skip
    for key in old + kept:
        store.put(key, b"{}\n")
    log = PredictionLog(store, "iris", "v1", 100, 10, flush_seconds=3600, retention=2 * 86400)
    assert log.sweep(now) == 4 and sorted(store.list("")) == sorted(kept)
    deleted = {s.labels["kind"]: s.value for f in log.collect() for s in f.samples if "deleted" in s.name}
    assert deleted == {"predictions": 2, "feedback": 2}
    log.close()


def test_a_label_too_large_or_too_deep_is_a_bad_request_never_a_server_error() -> None:
    """A regressor's label is at most 1e15 in magnitude (sums of errors stay finite); a label nested deeper
    than any is refused as a bad label, before any digest of it is taken."""
    check_label(1e15, None, 1)
    for label in (1e16, -1.7e308, [1.0, 2e15]):
        with pytest.raises(Rejected):
            check_label(label, None, 1 if not isinstance(label, list) else 2)
    deep: object = "setosa"
    for _ in range(1100):
        deep = [deep]
    with pytest.raises(Rejected) as error:
        parse_feedback({"id": issued(), "label": deep}, SIGNER, SPECIES, NOW, recent=Recent())
    assert error.value.reason == "bad_label"


def test_an_id_names_its_issuer_in_its_nonce_and_keeps_the_shape_older_pods_read() -> None:
    """Older pods read an id's fields as [version, rows, issued, nonce, predictions?]: the issuer rides in the
    nonce, so that each reads the other's ids."""
    token = SIGNER.issue("v1", 1, NOW, ["setosa"], issuer="a1b2c3d4")
    fields = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert len(fields) == 5 and fields[4] == ["setosa"] and fields[3].startswith("a1b2c3d4.")
    assert SIGNER.verify(token, NOW).issuer == "a1b2c3d4" and SIGNER.verify(issued(), NOW).issuer is None
