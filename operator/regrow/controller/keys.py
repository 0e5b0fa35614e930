"""The deployment's key, which signs prediction ids and proves a shadow's pods to the stable ones: made,
recorded, rotated and checked by an operator that may create Secrets but never read one (the chart's promise).

- The operator makes each key itself, so it knows the key's fingerprint (``regrow.contracts.key_fingerprint``)
  when it creates the Secret, and records it in ``status.feedbackKey``. A Secret of that name that exists
  already when it would make the first key is one regrow did not make (it cannot read it to tell): it is
  refused (``Ready=False``, ``FeedbackKeyConflict``), and no pod is made to read it.
- Pods report the fingerprints of the keys they hold. A ready pod that signs with neither the recorded key
  nor the one before it (pods mid-roll) holds a key regrow did not make, whose ids the other replicas refuse:
  ``Ready=False``, ``FeedbackKeyMismatch`` (the Secret was changed in place).
- A rotation (the annotation ``regrow.dev/rotate-feedback-key``, which ``regrow rotate-key`` sets) makes the
  next generation's Secret (``<name>-feedback-key-<n>``); the pods roll to it and keep the key before to verify
  the ids it signed. A pod that cannot start because the current Secret is gone (deleted to revoke the key,
  or by mistake) makes the same move. Older Secrets stay until the ModelDeployment is deleted (deleting a
  Secret answers with its content: the operator does not).
- A deployment that an operator made before keys were recorded (its Deployment reads the first Secret
  already) learns the fingerprint from its ready pods, once they agree.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from regrow import GROUP
from regrow.api.modeldeployment import FeedbackKeyStatus, ModelDeploymentSpec
from regrow.contracts import key_fingerprint
from regrow.controller.kube import Api, Conflict, Obj, path
from regrow.controller.result import Event
from regrow.manifests.common import Owner
from regrow.manifests.serving import FEEDBACK_ENV, feedback_key, feedback_key_name

ROTATE_ANNOTATION = f"{GROUP}/rotate-feedback-key"  # set by `regrow rotate-key`
CONFLICT = "FeedbackKeyConflict"
MISMATCH = "FeedbackKeyMismatch"
MISSING = "CreateContainerConfigError"  # a pod's waiting reason when a Secret it reads is not there


@dataclass(frozen=True)
class Keys:
    """The key the pods are to sign with (its generation), what the status records of it, and what is wrong."""

    generation: int
    record: FeedbackKeyStatus | None
    problem: tuple[str, str] | None = None  # (reason, message) for Ready=False
    events: tuple[Event, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether no pod may be made: the Secret is not one regrow made."""
        return self.problem is not None and self.problem[0] == CONFLICT


def recorded(status: Obj) -> FeedbackKeyStatus | None:
    """The key the status records (None: none, or a record this operator did not write)."""
    raw = status.get("feedbackKey")
    try:
        return FeedbackKeyStatus.model_validate(raw) if raw else None
    except ValueError:
        return None


def look(api: Api, owner: Owner, spec: ModelDeploymentSpec, body: Obj, live: Obj | None, signing: set[str],
         stuck: list[tuple[str, str]]) -> Keys:  # fmt: skip
    """The deployment's key at this look: made when it has none, rotated when asked to or when the current
    Secret is gone, checked against the keys the ready pods sign with (``signing``, their fingerprints).
    ``live``: the stable Deployment; ``stuck``: (reason, message) of each pod that cannot start."""
    if not spec.keyed:
        return Keys(1, None)
    before = recorded(body.get("status") or {})
    asked = ((body["metadata"].get("annotations") or {}).get(ROTATE_ANNOTATION) or "")[:64] or None
    if before is None:
        if not _reads_a_key(live):
            return _make(api, owner, 1, None, asked)
        learned = None  # made before keys were recorded: what its ready pods hold, once they agree
        if len(signing) == 1:
            (held,) = signing
            learned = FeedbackKeyStatus(generation=1, secret_name=feedback_key_name(owner), fingerprint=held)
        return Keys(1, learned)
    gone = any(reason == MISSING and f'"{before.secret_name}"' in message for reason, message in stuck)
    if gone or (asked is not None and asked != before.rotation):
        return _make(api, owner, before.generation + 1, before, asked, gone)
    strangers = sorted(signing - {before.fingerprint, before.previous_fingerprint})
    if not strangers:
        return Keys(before.generation, before)
    message = (
        f"ready pods sign with a key regrow did not make (fingerprint {', '.join(strangers)}; regrow's is "
        f"{before.fingerprint}): Secret {before.secret_name} was changed, and ids one replica issues fail on "
        f"another. `regrow rotate-key {owner.name}` makes a new key"
    )
    return Keys(before.generation, before, (MISMATCH, message))


def _reads_a_key(live: Obj | None) -> bool:
    containers = ((live or {}).get("spec") or {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return any(env.get("name") == FEEDBACK_ENV for env in containers[0].get("env") or [])


def _make(api: Api, owner: Owner, generation: int, before: FeedbackKeyStatus | None, asked: str | None,
          gone: bool = False) -> Keys:  # fmt: skip
    """Create the Secret of the ``generation``-th key, and record its fingerprint; refused when one of that
    name exists (regrow cannot vouch for a Secret it did not make)."""
    key, name = secrets.token_urlsafe(32), feedback_key_name(owner, generation)
    try:
        api.create(path("v1", "secrets", owner.namespace), feedback_key(owner, key, generation))
    except Conflict:
        message = (
            f"Secret {name} exists, and regrow did not make it (it makes each key itself and reads no Secret, so "
            f"it cannot vouch for one it did not make): delete it, and regrow makes its own"
        )
        if before is None:
            return Keys(1, None, (CONFLICT, message))
        kept = before.model_copy(update={"rotation": asked or before.rotation})  # the ask is answered: refused
        return Keys(before.generation, kept, None, (Event("Warning", "FeedbackKeyRotationRefused", message),))
    made = FeedbackKeyStatus(
        generation=generation, secret_name=name, fingerprint=key_fingerprint(key.encode()),
        previous_fingerprint=before.fingerprint if before else None,
        rotation=asked or (before.rotation if before else None),
    )  # fmt: skip
    if before is None:
        return Keys(generation, made, None, (Event("Normal", "FeedbackKeyCreated", f"Created Secret {name}, the "
                                                   f"deployment's key (fingerprint {made.fingerprint})"),))  # fmt: skip
    why = f"Secret {before.secret_name} is gone" if gone else "a rotation was asked for"
    return Keys(generation, made, None, (Event("Normal", "FeedbackKeyRotated", (
        f"Created Secret {name}, a new key (fingerprint {made.fingerprint}), as {why}: the pods roll to it, and "
        f"ids the key before signed still verify"
    )),))  # fmt: skip
