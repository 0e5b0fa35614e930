"""The deployment's key, which signs prediction ids and proves a shadow's pods to the stable ones: made,
recorded, rotated and checked by an operator that may create Secrets but never read one (the chart's promise).

- The operator makes each key itself, so it knows the key's fingerprint (``regrow.contracts.key_fingerprint``)
  when it creates the Secret, and records it in ``status.feedbackKey``. A Secret of the name it would use
  that exists already is one regrow did not make, or lost its record of (it cannot read it to tell): it is
  not used (a Warning Event, ``FeedbackKeyConflict``), and the next free name is; past TRIES taken names,
  the deployment is ``Ready=False``, ``FeedbackKeyConflict``, and no pod is made.
- Pods report the fingerprints of the keys they hold. A ready pod that holds a key that is neither the
  recorded one nor the one before it holds a key regrow did not make, whose ids other replicas may refuse:
  ``Ready=False``, ``FeedbackKeyMismatch`` (a Secret was changed in place).
- A rotation (the annotation ``regrow.dev/rotate-feedback-key``, which ``regrow rotate-key`` sets) makes the
  next generation's Secret (``<name>-feedback-key-<n>``); the pods roll to it and keep the key before to verify
  the ids it signed. A pod that cannot start because the current Secret is gone (deleted to revoke the key,
  or by mistake) makes the same move. Older Secrets stay until the ModelDeployment is deleted (deleting a
  Secret answers with its content: the operator does not).
- A Deployment whose pods read a key the status does not record (made by an operator before keys were
  recorded, or a record lost) keeps the Secrets it reads, and the record is learned from its ready pods
  once they agree.
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
from regrow.manifests.serving import FEEDBACK_ENV, PREVIOUS_KEY_ENV, KeyNames, feedback_key, feedback_key_name

ROTATE_ANNOTATION = f"{GROUP}/rotate-feedback-key"  # set by `regrow rotate-key`
CONFLICT = "FeedbackKeyConflict"
TRIES = 8  # names tried for a new key past those taken (a record lost, Secrets someone else made)
MISMATCH = "FeedbackKeyMismatch"
MISSING = "CreateContainerConfigError"  # a pod's waiting reason when a Secret it reads is not there


@dataclass(frozen=True)
class Keys:
    """The keys the pods are to hold, what the status records of them, and what is wrong."""

    names: KeyNames
    record: FeedbackKeyStatus | None
    problem: tuple[str, str] | None = None  # (reason, message) for Ready=False
    events: tuple[Event, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether no pod may be made: no Secret regrow made could be had."""
        return self.problem is not None and self.problem[0] == CONFLICT


def recorded(status: Obj) -> FeedbackKeyStatus | None:
    """The key the status records (None: none, or a record this operator did not write)."""
    raw = status.get("feedbackKey")
    try:
        return FeedbackKeyStatus.model_validate(raw) if raw else None
    except ValueError:
        return None


def _names(record: FeedbackKeyStatus | None) -> KeyNames:
    return KeyNames(record.generation, record.previous_generation) if record else KeyNames()


def look(api: Api, owner: Owner, spec: ModelDeploymentSpec, body: Obj, live: Obj | None, held: list[list[str]],
         stuck: list[tuple[str, str]]) -> Keys:  # fmt: skip
    """The deployment's key at this look: made when it has none, rotated when asked to or when the current
    Secret is gone, checked against the keys the ready pods hold (``held``: each one's fingerprints, the one it
    signs with first). ``live``: the stable Deployment; ``stuck``: (reason, message) of each pod that cannot
    start."""
    before = recorded(body.get("status") or {})
    if not spec.keyed:  # kept: the Secret stays, and a deployment keyed again signs with it
        return Keys(_names(before), before)
    asked = ((body["metadata"].get("annotations") or {}).get(ROTATE_ANNOTATION) or "")[:64] or None
    if before is None:
        reading = _read_by(owner, live)
        if reading is None:
            return _make(api, owner, 1, None, asked)
        return Keys(KeyNames(*reading), _learned(owner, reading, held))
    gone = any(reason == MISSING and f'"{before.secret_name}"' in message for reason, message in stuck)
    if gone or (asked is not None and asked != before.rotation):
        return _make(api, owner, before.generation + 1, before, asked, gone)
    expected = {before.fingerprint, before.previous_fingerprint}
    signing = {keys[0] for keys in held}
    verifying = {key for keys in held if keys[0] == before.fingerprint for key in keys[1:]}  # the current pods'
    strangers = sorted((signing | verifying) - expected)
    if not strangers:
        return Keys(_names(before), before)
    message = (
        f"ready pods hold a key regrow did not make (fingerprint {', '.join(strangers)}; regrow's is "
        f"{before.fingerprint}): a Secret of the deployment's keys was changed, and ids one replica issues may "
        f"fail on another. `regrow rotate-key {owner.name}` makes a new key"
    )
    return Keys(_names(before), before, (MISMATCH, message))


def _read_by(owner: Owner, live: Obj | None) -> tuple[int, int | None] | None:
    """The generations of the keys a Deployment's pods read (None: it reads none, or none of regrow's names)."""
    containers = ((live or {}).get("spec") or {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    refs = {env["name"]: ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            for env in containers[0].get("env") or [] if "name" in env}  # fmt: skip
    current, previous = _generation(owner, refs.get(FEEDBACK_ENV)), _generation(owner, refs.get(PREVIOUS_KEY_ENV))
    return None if current is None else (current, previous)


def _generation(owner: Owner, name: object) -> int | None:
    base = feedback_key_name(owner)
    if name == base:
        return 1
    suffix = name[len(base) + 1 :] if isinstance(name, str) and name.startswith(f"{base}-") else ""
    return int(suffix) if suffix.isdigit() and int(suffix) > 1 else None


def _learned(owner: Owner, reading: tuple[int, int | None], held: list[list[str]]) -> FeedbackKeyStatus | None:
    """The record of a deployment whose pods read a key the status does not record (made by an operator
    before keys were recorded, or a record lost): what its ready pods hold, once they agree."""
    signing = {keys[0] for keys in held}
    if len(signing) != 1:
        return None
    before = {keys[1] for keys in held if len(keys) > 1}
    (fingerprint,) = signing
    generation, previous = reading
    return FeedbackKeyStatus(
        generation=generation, secret_name=feedback_key_name(owner, generation), fingerprint=fingerprint,
        previous_fingerprint=before.pop() if len(before) == 1 and previous is not None else None,
        previous_generation=previous,
    )  # fmt: skip


def _make(api: Api, owner: Owner, generation: int, before: FeedbackKeyStatus | None, asked: str | None,
          gone: bool = False) -> Keys:  # fmt: skip
    """Create the Secret of a new key, the ``generation``-th or, where a Secret of that name exists (one regrow
    did not make, or lost its record of: it cannot read it to tell), the next free one, and record its
    fingerprint. Past TRIES names taken, no key is made."""
    key, taken = secrets.token_urlsafe(32), []
    for made_as in range(generation, generation + TRIES):
        name = feedback_key_name(owner, made_as)
        try:
            api.create(path("v1", "secrets", owner.namespace), feedback_key(owner, key, made_as))
            break
        except Conflict:
            taken.append(name)
    else:
        message = (
            f"Secrets {', '.join(taken)} exist, and regrow did not make them or lost its record of them (it reads "
            f"no Secret, so it cannot vouch for one): delete them, and regrow makes its own"
        )
        if before is None:
            return Keys(KeyNames(), None, (CONFLICT, message))
        kept = before.model_copy(update={"rotation": asked or before.rotation})  # the ask is answered: refused
        return Keys(_names(before), kept, None, (Event("Warning", "FeedbackKeyRotationRefused", message),))
    made = FeedbackKeyStatus(
        generation=made_as, secret_name=name, fingerprint=key_fingerprint(key.encode()),
        previous_fingerprint=before.fingerprint if before else None,
        previous_generation=before.generation if before else None,
        rotation=asked or (before.rotation if before else None),
    )  # fmt: skip
    events = [Event("Warning", CONFLICT, f"Secret {name} exists, and regrow did not make it or lost its record of "
                                         f"it: it is not used") for name in taken]  # fmt: skip
    if before is None:
        events.append(Event("Normal", "FeedbackKeyCreated", f"Created Secret {name}, the deployment's key "
                                                           f"(fingerprint {made.fingerprint})"))  # fmt: skip
    else:
        why = f"Secret {before.secret_name} is gone" if gone else "a rotation was asked for"
        events.append(Event("Normal", "FeedbackKeyRotated", (
            f"Created Secret {name}, a new key (fingerprint {made.fingerprint}), as {why}: the pods roll to it, "
            f"and ids the key before signed still verify"
        )))  # fmt: skip
    return Keys(_names(made), made, None, tuple(events))
