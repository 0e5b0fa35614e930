"""A model version loaded from the registry: the onnxruntime session, its profile and its metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from regrow.contracts import AliasReading, Reason
from regrow.drift.profile import Profile
from regrow.inference import OnnxModel
from regrow.storage import NotFound
from regrow.storage.registry import METADATA, MODEL, PROFILE, Registry


class ModelUnavailable(Exception):
    """The model cannot be served: it is missing from the registry, or its parts disagree."""

    reason: Reason = "ModelUnavailable"  # as the server's metadata reports it


class ModelNotPublished(ModelUnavailable):
    """The alias or version is not in the registry (yet): a TrainingJob may still be publishing it."""

    reason: Reason = "ModelNotPublished"


class AwaitingVersion(ModelUnavailable):
    """The server loads only a version the operator pins (a Canary's stable pods): it reads the alias meanwhile."""

    reason: Reason = "AwaitingVersion"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    uri: str
    session: OnnxModel
    profile: Profile
    metadata: dict[str, Any]

    @property
    def features(self) -> list[str]:
        return list(self.metadata["features"])

    @property
    def classes(self) -> list[Any]:
        return list(self.metadata.get("classes") or [])

    @property
    def task(self) -> str:
        return str(self.metadata["task"])

    @property
    def columns(self) -> list[tuple[str, bool]] | None:
        """A model that takes a column each: each column's name and whether it is categorical (else None)."""
        return self.session.inputs if self.session.columns else None

    def warm_up(self) -> None:
        """One inference on a typical row (the training medians and commonest categories), before the server
        reports ready."""
        typical = [f.categories[0] if f.categories else (f.edges[len(f.edges) // 2] if f.edges else "")
                   for f in self.profile.features]  # fmt: skip
        if self.session.columns:
            self.session.predict([np.asarray([v], dtype=object if text else np.float32)
                                  for v, (_, text) in zip(typical, self.session.inputs, strict=True)])  # fmt: skip
        else:
            self.session.predict(np.asarray([typical], dtype=np.float32))


def resolve(registry: Registry, name: str, alias: str | None, version: str | None,
            reading: AliasReading | None, await_version: bool = False) -> str:  # fmt: skip
    """The version to load: the pinned one, else where the alias was just read to point (unless the server awaits
    a pinned one)."""
    if version is not None:
        return version
    if reading is None:
        raise ModelNotPublished(f"alias {alias} of model {name} does not exist in {registry.store.uri}")
    if await_version:
        raise AwaitingVersion(f"waiting for the operator to pin a version (alias {alias} points at {reading.version})")
    return reading.version


def load(registry: Registry, name: str, version: str, threads: int = 1) -> LoadedModel:
    try:
        metadata = json.loads(registry.read(name, version, METADATA))
        onnx = registry.read(name, version, MODEL)
        profile = Profile.from_json(registry.read(name, version, PROFILE))
    except NotFound as missing:
        raise ModelNotPublished(f"version {version} of model {name} is not published: {missing}") from None
    model = LoadedModel(
        name, version, registry.version_uri(name, version), OnnxModel(onnx, threads=threads), profile, metadata
    )
    text = [f.name for f in profile.features if not f.numeric]
    agree = model.session.n_features == len(model.features) and profile.names == model.features
    if model.session.columns:
        agree &= model.session.inputs == [(f, f in text) for f in model.features]
    if not agree or (text and not model.session.columns):
        raise ModelUnavailable(f"version {version} of model {name}: model, profile and metadata disagree on features")
    return model
