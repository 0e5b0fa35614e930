"""The deployment's key: made and recorded by an operator that creates Secrets and reads none, refused when a
Secret of its name is not regrow's, checked against what the pods hold, rotated on request or when its Secret
is gone, with the key before still verifying."""

from __future__ import annotations

from typing import Any

import pytest

from regrow.api.modeldeployment import CanaryStep, FeedbackKeyStatus, RolloutSpec
from regrow.contracts import key_fingerprint
from regrow.controller import keys
from regrow.controller.kube import Conflict, Obj
from regrow.manifests.common import PodDefaults
from regrow.manifests.serving import KeyNames, deployment
from tests.unit.test_modeldeployment_reconciler import OWNER, _spec


class Secrets:
    """The Secret calls of the API: create only (the operator may not read Secrets)."""

    def __init__(self, *existing: str) -> None:
        self.existing = set(existing)
        self.created: list[Obj] = []

    def create(self, path: str, body: Obj) -> Obj:
        assert path == "/api/v1/namespaces/ml/secrets" and body["kind"] == "Secret"
        if body["metadata"]["name"] in self.existing:
            raise Conflict(path)
        self.existing.add(body["metadata"]["name"])
        self.created.append(body)
        return body

    def fingerprint(self, index: int = -1) -> str:
        return key_fingerprint(self.created[index]["stringData"]["key"].encode())


def _body(record: FeedbackKeyStatus | None = None, rotate: str | None = None) -> Obj:
    annotations = {keys.ROTATE_ANNOTATION: rotate} if rotate else {}
    return {"metadata": {"name": "iris", "annotations": annotations},
            "status": {"feedbackKey": record.to_wire()} if record else {}}  # fmt: skip


def _look(api: Secrets, body: Obj, live: Obj | None = None, held: list[list[str]] | None = None,
          stuck: list[tuple[str, str]] | None = None, spec: Any = None) -> keys.Keys:  # fmt: skip
    return keys.look(api, OWNER, spec or _spec(), body, live, held or [], stuck or [])  # type: ignore[arg-type]


def _env(manifest: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_first_key_is_made_once_and_its_fingerprint_recorded() -> None:
    api = Secrets()
    made = _look(api, _body())
    (secret,) = api.created
    assert (
        secret["metadata"]["name"] == "iris-feedback-key" and secret["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    )
    assert len(secret["stringData"]["key"]) >= 43  # 32 random bytes
    assert made.record == FeedbackKeyStatus(
        generation=1, secret_name="iris-feedback-key", fingerprint=api.fingerprint()
    )
    assert [e.reason for e in made.events] == ["FeedbackKeyCreated"] and made.problem is None
    again = _look(api, _body(made.record), held=[[made.record.fingerprint]])
    assert (again.record, again.problem, again.events, len(api.created)) == (
        made.record,
        None,
        (),
        1,
    )  # at rest: nothing


def test_a_secret_regrow_did_not_make_is_never_used() -> None:
    """The operator cannot read a Secret to vouch for it: one of the name it would use that exists already
    (someone else's, or its own whose record was lost) is left alone, and the next free name is used; past
    TRIES taken names no pod is made. Before, the first was adopted as it was."""
    api = Secrets("iris-feedback-key")
    made = _look(api, _body())
    assert made.record is not None and made.record.secret_name == "iris-feedback-key-2" and not made.refused
    assert made.names == KeyNames(2) and [e.reason for e in made.events] == [
        "FeedbackKeyConflict",
        "FeedbackKeyCreated",
    ]
    assert _env(deployment(OWNER, _spec(), PodDefaults(), None, key=made.names))["REGROW_FEEDBACK_KEY"] == {
        "secretKeyRef": {"name": "iris-feedback-key-2", "key": "key"}}  # fmt: skip
    taken = [f"iris-feedback-key-{n}" for n in range(2, keys.TRIES + 1)]
    refused = _look(Secrets("iris-feedback-key", *taken), _body())
    assert refused.refused and refused.record is None and refused.problem is not None
    assert refused.problem[0] == "FeedbackKeyConflict" and "delete them" in refused.problem[1]


def test_a_pod_holding_another_key_is_a_mismatch_but_the_key_before_is_not() -> None:
    api = Secrets()
    record = _look(api, _body()).record
    assert record is not None
    rotated = _look(api, _body(record, rotate="2026-12-07T00:00:00Z")).record
    assert rotated is not None and rotated.previous_fingerprint == record.fingerprint
    mid_roll = _look(api, _body(rotated), held=[[record.fingerprint], [rotated.fingerprint, record.fingerprint]])
    assert mid_roll.problem is None  # old pods sign with the key before; the new ones verify it
    stranger = key_fingerprint(b"x" * 32)
    swapped = _look(api, _body(rotated), held=[[rotated.fingerprint, stranger]])  # the key before, changed
    assert swapped.problem is not None and stranger in swapped.problem[1]
    changed = _look(api, _body(rotated), held=[[rotated.fingerprint], [stranger]])
    assert changed.problem is not None and changed.problem[0] == "FeedbackKeyMismatch" and not changed.refused
    assert stranger in changed.problem[1] and "regrow rotate-key iris" in changed.problem[1]


@pytest.mark.parametrize("cause", ["asked", "gone"])
def test_a_rotation_makes_the_next_secret_and_the_pods_keep_the_key_before(cause: str) -> None:
    api = Secrets()
    first = _look(api, _body()).record
    assert first is not None
    if cause == "asked":
        rotated = _look(api, _body(first, rotate="t1"))
    else:  # deleted to revoke it: a new pod cannot start
        rotated = _look(
            api, _body(first), stuck=[("CreateContainerConfigError", 'secret "iris-feedback-key" not found')]
        )
    assert [s["metadata"]["name"] for s in api.created] == ["iris-feedback-key", "iris-feedback-key-2"]
    assert rotated.names == KeyNames(2, 1) and rotated.record == FeedbackKeyStatus(
        generation=2, secret_name="iris-feedback-key-2", fingerprint=api.fingerprint(),
        previous_fingerprint=first.fingerprint, previous_generation=1,
        rotation="t1" if cause == "asked" else None)  # fmt: skip
    assert [e.reason for e in rotated.events] == ["FeedbackKeyRotated"]
    assert len(_look(api, _body(rotated.record, rotate="t1" if cause == "asked" else None)).events) == 0  # once
    env = _env(deployment(OWNER, _spec(), PodDefaults(), None, key=rotated.names))
    assert env["REGROW_FEEDBACK_KEY"] == {"secretKeyRef": {"name": "iris-feedback-key-2", "key": "key"}}
    assert env["REGROW_FEEDBACK_PREVIOUS_KEY"] == {"secretKeyRef": {"name": "iris-feedback-key", "key": "key",
                                                                    "optional": True}}  # fmt: skip
    third = _look(api, _body(rotated.record, rotate="t2"))
    env = _env(deployment(OWNER, _spec(), PodDefaults(), None, key=third.names))
    assert env["REGROW_FEEDBACK_PREVIOUS_KEY"]["secretKeyRef"]["name"] == "iris-feedback-key-2"


def test_a_rotation_past_a_secret_regrow_did_not_make_takes_the_next_name() -> None:
    api = Secrets("iris-feedback-key-2")
    first = _look(api, _body()).record
    assert first is not None
    rotated = _look(api, _body(first, rotate="t1"))
    assert rotated.names == KeyNames(3, 1) and rotated.record is not None
    assert (
        rotated.record.secret_name == "iris-feedback-key-3" and rotated.record.previous_fingerprint == first.fingerprint
    )
    env = _env(deployment(OWNER, _spec(), PodDefaults(), None, key=rotated.names))
    assert env["REGROW_FEEDBACK_PREVIOUS_KEY"]["secretKeyRef"]["name"] == "iris-feedback-key"
    full = Secrets(*[f"iris-feedback-key-{n}" for n in range(2, 2 + keys.TRIES)])
    record = _look(full, _body()).record
    assert record is not None
    refused = _look(full, _body(record, rotate="t1"))  # every name taken: the key stays, the ask is answered
    assert refused.names == KeyNames() and refused.record == record.model_copy(update={"rotation": "t1"})
    assert [e.reason for e in refused.events] == ["FeedbackKeyRotationRefused"] and not refused.refused


def test_a_deployment_whose_record_is_missing_learns_its_keys_from_its_pods() -> None:
    """Made by an operator before keys were recorded, or its status lost: the Secrets its Deployment reads stay
    (no roll back to an older key), and the record comes from what its ready pods hold, once they agree."""
    api = Secrets("iris-feedback-key")
    live = deployment(OWNER, _spec(), PodDefaults(), None)
    assert _env(live)["REGROW_FEEDBACK_KEY"] == {"secretKeyRef": {"name": "iris-feedback-key", "key": "key"}}
    assert "REGROW_FEEDBACK_PREVIOUS_KEY" not in _env(live)  # the first key's template is as it was: no roll
    assert _look(api, _body(), live).record is None  # no pod says yet
    held = key_fingerprint(b"k" * 43)
    assert _look(api, _body(), live, held=[[held], [key_fingerprint(b"j" * 43)]]).record is None  # they disagree
    learned = _look(api, _body(), live, held=[[held]])
    assert learned.record == FeedbackKeyStatus(generation=1, secret_name="iris-feedback-key", fingerprint=held)
    rotated = deployment(OWNER, _spec(), PodDefaults(), None, key=KeyNames(3, 2))
    before = key_fingerprint(b"i" * 43)
    lost = _look(api, _body(), rotated, held=[[held, before]])
    assert lost.names == KeyNames(3, 2) and lost.record == FeedbackKeyStatus(
        generation=3, secret_name="iris-feedback-key-3", fingerprint=held, previous_fingerprint=before,
        previous_generation=2)  # fmt: skip
    assert api.created == []


def test_a_deployment_that_needs_no_key_gets_none() -> None:
    api = Secrets()
    quiet = _spec(spec__predictionLog=..., spec__labellers=...)
    assert _look(api, _body(), spec=quiet) == keys.Keys(KeyNames(), None) and api.created == []
    assert "REGROW_FEEDBACK_KEY" not in _env(deployment(OWNER, quiet, PodDefaults(), None))
    mirrored = RolloutSpec(strategy="Canary", steps=[CanaryStep(mirror=10, pause="1m")])
    shadowed = quiet.model_copy(update={"rollout": mirrored})
    made = _look(api, _body(), spec=shadowed).record
    assert made is not None  # the shadow's handshake needs the key
    kept = _look(api, _body(made), spec=quiet)  # no longer keyed: the record stays, for when it is again
    assert kept == keys.Keys(KeyNames(), made) and _look(api, _body(made), spec=shadowed).problem is None
