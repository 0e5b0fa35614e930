"""Live bin counts over a time window, from the counters that serving pods export.

Each check scrapes every ready pod's ``regrow_feature_bin_total`` for the serving version into one flat
vector per pod (the profile's layout). The increase over the window sums, per pod, the increases
between consecutive scrapes; a counter that went down means the pod restarted, and its new value is
all increase (as Prometheus' ``increase()`` treats resets). A pod first seen after the first scrape
started within the window, so all its counts are new; at the very first scrape there is no baseline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import pydantic
from prometheus_client.parser import text_string_to_metric_families

from regrow.drift.profile import Profile

Vector = npt.NDArray[np.int64]
# Prometheus' errorType values (its HTTP API): the only part of a refusal a message repeats, since a URL
# that is not Prometheus could answer anything (a status must not carry another service's answer).
ERROR_TYPES = {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable", "not_found",
               "not_acceptable"}  # fmt: skip


class _Sample(pydantic.BaseModel):
    metric: dict[str, str]
    value: tuple[float, float]  # (time, value): Prometheus writes the value as a string


class _Vector(pydantic.BaseModel):
    resultType: Literal["vector"]  # noqa: N815 - Prometheus' name
    result: list[_Sample]


class _Answer(pydantic.BaseModel):
    """What regrow reads of Prometheus' answer to an instant query."""

    status: str
    errorType: str = ""  # noqa: N815 - Prometheus' name
    data: _Vector | None = None


def _vector(profile: Profile, samples: Iterable[tuple[dict[str, str], float]]) -> Vector:
    """Bin counts, labelled by feature and bin, in the profile's flat layout (unknown bins are ignored)."""
    index = {
        (feature.name, label): int(offset) + i
        for feature, offset in zip(profile.features, profile.offsets, strict=True)
        for i, label in enumerate(feature.labels)
    }
    out = np.zeros(int(profile.sizes.sum()), dtype=np.int64)
    for labels, value in samples:
        where = index.get((labels.get("feature", ""), labels.get("bin", "")))
        if where is not None:
            out[where] = round(value)
    return out


def parse_bins(text: str, profile: Profile, model: str, version: str) -> Vector:
    """One pod's ``regrow_feature_bin_total`` for ``model``/``version`` in the profile's flat layout."""
    return _vector(
        profile,
        (
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == "regrow_feature_bin"
            for sample in family.samples
            if sample.labels.get("model") == model and sample.labels.get("version") == version
        ),
    )


def bins_query(model: str, version: str, window: float, labels: dict[str, str]) -> str:
    """The PromQL for the bin counts added over ``window`` seconds, summed over the pods ``labels`` select."""
    matchers = {"model": model, "version": version, **labels}
    selector = ",".join(f"{key}={json.dumps(value)}" for key, value in matchers.items())
    return f"sum by (feature, bin) (increase(regrow_feature_bin_total{{{selector}}}[{round(window)}s]))"


def parse_query_result(body: bytes, profile: Profile) -> Vector:
    """A Prometheus instant-query answer to ``bins_query`` in the profile's flat layout. ``increase()``
    extrapolates to the window's edges, so counts come back fractional: they are rounded. Raises ValueError
    saying what is wrong with an answer that is not a vector, without repeating it."""
    try:
        answer = _Answer.model_validate_json(body)
    except pydantic.ValidationError as error:
        raise ValueError("the answer is not a Prometheus instant-query vector (not copied here)") from error
    if answer.status != "success" or answer.data is None:
        kind = f" ({answer.errorType})" if answer.errorType in ERROR_TYPES else ""
        raise ValueError(f"Prometheus refused the query{kind}; its answer is not copied here")
    samples = ((r.metric, r.value[1]) for r in answer.data.result)
    return _vector(profile, ((labels, value) for labels, value in samples if math.isfinite(value)))


@dataclass(frozen=True)
class Scrape:
    time: float
    pods: dict[str, Vector]


@dataclass
class History:
    """The scrapes of one version, kept for as long as the window needs them."""

    version: str
    scrapes: list[Scrape] = field(default_factory=list)

    def add(self, scrape: Scrape, window: float) -> None:
        self.scrapes.append(scrape)
        # Keep the newest scrape at or before the window's start as the baseline, and everything after.
        start = scrape.time - window
        keep = max((i for i, s in enumerate(self.scrapes) if s.time <= start), default=0)
        del self.scrapes[:keep]

    def increase(self, window: float, size: int) -> Vector | None:
        """Counts added over the last ``window`` seconds, summed over pods; None before a second scrape."""
        if len(self.scrapes) < 2:
            return None
        start, first = self.scrapes[-1].time - window, self.scrapes[0].time
        total = np.zeros(size, dtype=np.int64)
        previous: dict[str, Vector] = {}
        for scrape in self.scrapes:
            for pod, counts in scrape.pods.items():
                before = previous.get(pod)
                previous[pod] = counts
                if scrape.time <= start:
                    continue  # a baseline only
                if before is None:
                    if scrape.time > first:  # a pod that started within the window
                        total += counts
                elif (counts < before).any():  # the pod restarted: its counters began again at zero
                    total += counts
                else:
                    total += counts - before
        return total
