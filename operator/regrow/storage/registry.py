"""The model registry on top of a store.

Layout under the registry root::

    <model>/versions/<version>/model.onnx      the model
    <model>/versions/<version>/profile.json    the reference profile of the training data
    <model>/versions/<version>/metadata.json   written last: a version is complete once it exists
    <model>/aliases/<alias>.json               {"version": ..., "generation": ..., "previous": ..., "updated": ...}
    <model>/runs/<run-id>.json                 what one training run produced and decided

A version is the first 16 hex digits of the SHA-256 over the model and profile bytes, so the same
training output never gets two versions, and publishing a version that exists changes nothing.

An alias moves by a conditional write of its record (S3's If-Match, or a lock beside the file on file://):
a promotion moves it only from the version its gate compared with, so of two runs gated against the same
champion one wins and the other is told it lost, where both used to report Promoted and the last write won.
An S3-compatible store that ignores conditional writes is refused for alias moves, not trusted.

Each move raises the record's ``generation`` by one (a record written before generations were kept counts as 0),
so that readers can order what they read without a clock: a serving pod reports the generation with the
version it read, a promotion records the one it wrote, and the operator follows the highest it has seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from regrow.clock import now
from regrow.contracts import AliasReading
from regrow.storage import NotFound, PreconditionFailed, Store

MODEL, PROFILE, METADATA = "model.onnx", "profile.json", "metadata.json"


def content_version(model: bytes, profile: bytes) -> str:
    digest = hashlib.sha256()
    for part in (model, profile):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Published:
    version: str
    uri: str
    created: bool  # False when the version already existed


class AliasMoved(Exception):
    """A promotion lost: the alias moved between the gate's comparison and the write."""


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def version_uri(self, model: str, version: str) -> str:
        return f"{self.store.uri}/{model}/versions/{version}"

    def publish(self, model: str, onnx: bytes, profile: bytes, metadata: dict[str, Any]) -> Published:
        version = content_version(onnx, profile)
        base = f"{model}/versions/{version}"
        if self.store.exists(f"{base}/{METADATA}"):
            return Published(version, self.version_uri(model, version), created=False)
        self.store.put(f"{base}/{MODEL}", onnx)
        self.store.put(f"{base}/{PROFILE}", profile)
        self.store.put(f"{base}/{METADATA}", _json({**metadata, "version": version}))
        return Published(version, self.version_uri(model, version), created=True)

    def read(self, model: str, version: str, name: str) -> bytes:
        return self.store.get(f"{model}/versions/{version}/{name}")

    def metadata(self, model: str, version: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.read(model, version, METADATA))
        return loaded

    def versions(self, model: str) -> list[str]:
        keys = self.store.list(f"{model}/versions/")
        return sorted({k.split("/")[2] for k in keys if k.endswith(f"/{METADATA}")})

    def resolve(self, model: str, alias: str) -> str | None:
        """The version an alias points at, or None if the alias does not exist."""
        reading = self.read_alias(model, alias)
        return reading.version if reading is not None else None

    def read_alias(self, model: str, alias: str) -> AliasReading | None:
        """Where an alias points and the generation of its record, or None if the alias does not exist."""
        try:
            return _reading(self.store.get(f"{model}/aliases/{alias}.json"))
        except NotFound:
            return None

    def set_alias(self, model: str, alias: str, version: str) -> AliasReading:
        """Point ``alias`` at ``version``, over whatever it points at now (a person's promotion)."""
        return self._move(model, alias, version, None, check=False)

    def promote(self, model: str, alias: str, version: str, over: str | None) -> AliasReading:
        """Point ``alias`` at ``version`` only if it still points at ``over``, the version the gate compared
        with (None: it did not exist); else AliasMoved, and the alias stays as the other writer set it. Returns
        the alias as it now reads."""
        return self._move(model, alias, version, over, check=True)

    def _move(self, model: str, alias: str, version: str, over: str | None, check: bool) -> AliasReading:
        if not self.store.exists(f"{model}/versions/{version}/{METADATA}"):
            raise NotFound(f"{model} has no complete version {version}")
        key = f"{model}/aliases/{alias}.json"
        current = self.store.read_tagged(key)
        before = _reading(current[0]) if current else None
        previous = before.version if before is not None else None
        if before is not None and previous == version:  # already there: keep the record, and the version before
            return before
        if check and previous != over:
            raise AliasMoved(f"{alias} of {model} moved to {previous} after {version} was compared with {over}")
        moved = AliasReading(version=version, generation=before.generation + 1 if before is not None else 1)
        record = {"version": version, "generation": moved.generation, "previous": previous, "updated": now()}
        try:  # the same write only if no one moved the alias since it was read
            self.store.put_if(key, _json(record), current[1] if current else None)
        except PreconditionFailed:
            raise AliasMoved(f"{alias} of {model} was moved by another writer at the same moment") from None
        return moved

    def write_run(self, model: str, run_id: str, record: dict[str, Any]) -> None:
        self.store.put(f"{model}/runs/{run_id}.json", _json(record))

    def read_run(self, model: str, run_id: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.store.get(f"{model}/runs/{run_id}.json"))
        return loaded


def _reading(raw: bytes) -> AliasReading:
    record = json.loads(raw)
    return AliasReading(version=str(record["version"]), generation=int(record.get("generation") or 0))


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()
