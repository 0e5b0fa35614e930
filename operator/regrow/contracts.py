"""What regrow's processes tell each other: one model per message, used by the side that writes it and the side
that reads it, so that a field misspelt on either side is an error, not a value silently missing.

- A serving pod's model metadata (``GET /v2/models/<name>``): the Open Inference Protocol's, with regrow's
  parameters, which the operator reads to learn what each pod serves and where its alias points.
- A training pod's report (its container's termination message, and stdout), which the operator turns into the
  TrainingJob's status.
- A serving pod's environment, which the operator's manifest sets and ``regrow serve`` reads.
- An alias as read from the registry (``AliasReading``): what the pods report and a promotion records, ordered
  by the alias record's generation.
- A serving pod's quality answer (``Quality``): what the labels of the ids it issued graded, which a canary's
  quality gate sums.
- The prediction log's files (``log_key``, ``logged_at``): the serving pods write them, and read the labels back;
  the trainer reads them by time.

The statuses the operator writes go through the kinds' Status models (``regrow.controller.result``).
"""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from regrow.api.modeldeployment import DEFAULT_SERVER
from regrow.api.trainingjob import LiveRows, PromotionStatus, ValidationCheck


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class AliasReading(Message):
    """Where an alias pointed when it was read: its version, and the generation of its record, which every move
    of the alias raises by one (a record written before generations were kept reads as 0). Of two readings, the
    one of the higher generation is the newer, whoever read it and whenever: no clock orders them."""

    version: str
    generation: int = Field(ge=0)


def newest(readings: Iterable[AliasReading | None]) -> AliasReading | None:
    """The newest of ``readings`` (None where they say nothing, or where those of the highest generation name
    different versions, as two writers that keep no generation could make them)."""
    known = [r for r in readings if r is not None]
    if not known:
        return None
    top = max(r.generation for r in known)
    versions = {r.version for r in known if r.generation == top}
    return AliasReading(version=versions.pop(), generation=top) if len(versions) == 1 else None


class TensorMetadata(Message):
    name: str
    datatype: str
    shape: list[int]


Reason = Literal["ModelNotPublished", "AwaitingVersion", "ModelUnavailable"]


class ModelParameters(Message):
    alias: str | None = None
    alias_version: str | None = Field(default=None, description="The version the alias resolved to when last read.")
    alias_generation: int | None = Field(default=None, ge=0, description="The alias record's generation then.")
    alias_age_seconds: float | None = Field(
        default=None, ge=0, description="How long ago the alias was last read (a failed read keeps the one before)."
    )
    error: str | None = Field(default=None, description="Why no model is served, or the server is draining.")
    reason: Reason | None = Field(
        default=None,
        description="ModelNotPublished: the alias or version is not in the registry yet; AwaitingVersion: the pod "
        "reads the alias but loads only a version the operator pins; ModelUnavailable: it failed to load.",
    )
    uri: str | None = None
    task: str | None = None
    features: list[str] | None = None
    classes: list[Any] | None = None
    metrics: dict[str, Any] | None = None
    keys: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]] | None = Field(
        default=None, max_length=2,
        description="The fingerprints of the deployment's keys the pod holds (key_fingerprint), the one it signs "
        "with first: the operator sees a pod whose key is not the one it made.",
    )  # fmt: skip


class ModelMetadata(Message):
    """A serving pod's answer to ``GET /v2/models/<name>``; ``versions`` is empty until a model is loaded."""

    name: str
    versions: list[str]
    platform: str = "onnxruntime"
    inputs: list[TensorMetadata] | None = None
    outputs: list[TensorMetadata] | None = None
    parameters: ModelParameters = Field(default_factory=ModelParameters)

    @property
    def serving(self) -> str | None:
        """The version this pod serves, if it serves one and is not failing or draining."""
        return self.versions[0] if self.versions and not self.parameters.error else None

    @property
    def reading(self) -> AliasReading | None:
        """Where this pod last read its alias to point, if it has read it."""
        params = self.parameters
        if params.alias_version is None:
            return None
        return AliasReading(version=params.alias_version, generation=params.alias_generation or 0)


class TrainerReport(Message):
    """How a training run ended. A successful run names what it published (and the gate's decision); a failed
    one its reason (the Succeeded condition's) and a message that quotes no data."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    succeeded: bool
    reason: str | None = None
    message: str | None = None
    model: str | None = None
    version: str | None = None
    uri: str | None = None
    metric: str | None = None
    metrics: dict[str, str] = Field(default_factory=dict)
    parity_error: str | None = None
    train_seconds: str | None = None
    promotion: PromotionStatus | None = None
    validation: list[ValidationCheck] | None = None
    feedback: LiveRows | None = None


class Graded(Message):
    """What the labels of one version's ids graded: the ids, their rows, and the grade (rows right, for a
    classifier; the absolute errors summed, for a regressor)."""

    ids: int = Field(ge=0)
    rows: int = Field(ge=0)
    graded: float = Field(ge=0, allow_inf_nan=False)


class Quality(Message):
    """A serving process's answer to ``GET /v2/models/<model>/quality?since=<unix seconds>`` (metrics port):
    the labels of the ids it issued at ``since`` or later, each id graded once (see regrow.serving.labels).
    ``complete`` is False when it has forgotten ids issued since then (it holds a bounded number)."""

    since: int
    complete: bool
    versions: dict[str, Graded] = Field(default_factory=dict, max_length=16)


LOG_KINDS = ("predictions", "feedback")
_LOG_STAMP = "%Y%m%dT%H%M%SZ"


def log_key(model: str, kind: str, version: str, when: float, writer: str, sequence: int) -> str:
    """Where the prediction log writes a batch of ``kind`` records (predictions, or the labels of predictions
    by ``version``): named by the time it was written, so that readers list them by time."""
    stamp = time.strftime(_LOG_STAMP, time.gmtime(when))
    return f"{model}/{kind}/{version}/{stamp}-{writer}-{sequence:06d}.jsonl"


def log_prefix(model: str, kind: str, version: str = "") -> str:
    return f"{model}/{kind}/{version}/" if version else f"{model}/{kind}/"


def log_start(model: str, kind: str, version: str, when: float) -> str:
    """A key that sorts just before every file of that log written at ``when`` or later (for ``list``'s
    ``start_after``)."""
    return log_prefix(model, kind, version) + time.strftime(_LOG_STAMP, time.gmtime(when))


def logged_at(key: str) -> float | None:
    """When the log file ``key`` was written, by its name (None: not a log file's name)."""
    name = key.rsplit("/", 1)[-1]
    try:
        return calendar.timegm(time.strptime(name[: len("20261207T000000Z")], _LOG_STAMP))
    except ValueError:
        return None


MIN_KEY_BYTES = 32  # the deployment's key (REGROW_FEEDBACK_KEY), at least


MAX_BUSINESS_KEY = 256  # characters of a request's business key (parameters.business_key), at most


def business_key_hash(key: str) -> str:
    """What the prediction log holds for a request's business key (a customer's, a transaction's: it may be
    personal data), and what ground truth in the store is joined on: 32 hex digits of a SHA-256 under a
    purpose of its own. A pseudonym, not an anonymisation: whoever knows a key can compute its hash."""
    return hashlib.sha256(b"regrow-business-key\0" + key.encode()).hexdigest()[:32]


def key_fingerprint(key: bytes) -> str:
    """What names a deployment's key without saying anything of it: 16 hex digits of a SHA-256 under a purpose
    of its own (the operator computes it of the key it makes, a pod of the key it holds)."""
    return hashlib.sha256(b"regrow-feedback-key-fingerprint\0" + key).hexdigest()[:16]


class ServingEnv(BaseModel):
    """A serving pod's settings, as environment variables: each field is ``REGROW_<FIELD>``. The operator sets
    those its manifest names (in this order: a change of the order or of a value's text would roll every serving
    pod); ``regrow serve`` reads them, its flags winning."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=lambda name: f"REGROW_{name.upper()}"
    )

    registry: str | None = None
    model_name: str | None = None
    model_alias: str | None = None
    model_version: str | None = None
    await_version: bool = False  # with no model_version: read the alias, load nothing (a Canary's stable pods)
    refresh_seconds: float = 30.0
    drain_seconds: float = 5.0
    max_connections: int = DEFAULT_SERVER.max_connections
    max_rows: int = DEFAULT_SERVER.max_rows
    shed_after_ms: int = DEFAULT_SERVER.shed_after_milliseconds
    metrics_port: int = 0
    storage_endpoint: str | None = None
    prediction_log_percent: int = Field(default=0, ge=0, le=100)
    prediction_log_max_queue: int = 10000
    prediction_log_retention_seconds: int = Field(default=30 * 86400, ge=1)
    label_horizon_seconds: int = Field(default=30 * 86400, ge=1)  # a label is taken this long after its prediction
    labellers_dir: str | None = None  # a folder per named labeller, each file in it a token (regrow.serving.labellers)
    # A Secret: signs ids, proves the shadow. Set, it must be long enough to guess no id: an empty one (a Secret
    # holding nothing) is refused rather than replaced by a key of the process's own that no other replica has.
    feedback_key: str | None = Field(default=None, repr=False, min_length=MIN_KEY_BYTES)
    feedback_previous_key: str | None = Field(default=None, repr=False, min_length=MIN_KEY_BYTES)  # verifies too
    shadow_url: str | None = None
    shadow_percent: int = Field(default=0, ge=0, le=100)
    threads: int = 1  # onnxruntime's, from the container's CPU limit
    host: str = "0.0.0.0"
    port: int = 8080
    idle_timeout_seconds: float = 75.0
    max_body_bytes: int = 8 << 20

    @classmethod
    def variable(cls, field: str) -> str:
        alias = cls.model_fields[field].alias
        assert alias is not None
        return alias

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ServingEnv:
        """The settings the environment holds (other variables are not read); ValueError naming each variable
        that does not parse, and what it should be, without its value."""
        names = {cls.variable(field) for field in cls.model_fields}
        kept = {cls.variable("feedback_key"), cls.variable("feedback_previous_key")}
        try:
            return cls.model_validate(
                {name: value for name, value in environ.items() if name in names and (value or name in kept)}
            )
        except ValidationError as error:
            problems = "; ".join(f"${item['loc'][0]}: {item['msg']}" for item in error.errors(include_url=False))
            raise ValueError(problems) from None

    def variables(self, sources: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The ``env`` of a container: each field that was set, as text, and each of ``sources`` (fields whose value
        comes from elsewhere: a Secret, a resource limit) as a ``valueFrom``, all in the order of the fields."""
        sources = sources or {}
        out: list[dict[str, Any]] = []
        for field in type(self).model_fields:
            value = getattr(self, field)
            if field in sources:
                out.append({"name": self.variable(field), "valueFrom": sources[field]})
            elif field in self.model_fields_set and value is not None:
                text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
                out.append({"name": self.variable(field), "value": text})
        return out
