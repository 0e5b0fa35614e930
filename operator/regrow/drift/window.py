"""Live bin counts over a time window, from the counters that serving pods export.

Each check scrapes every ready pod's ``regrow_feature_bin_total`` for the serving version into one flat
vector per pod (the profile's layout). The increase over the window sums, per pod, the increases
between consecutive scrapes; a counter that went down means the pod restarted, and its new value is
all increase (as Prometheus' ``increase()`` treats resets). A pod first seen after the first scrape
started within the window, so all its counts are new; at the very first scrape there is no baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

from regrow.drift.profile import Profile

Vector = npt.NDArray[np.int64]


def parse_bins(text: str, profile: Profile, model: str, version: str) -> Vector:
    """One pod's ``regrow_feature_bin_total`` for ``model``/``version`` in the profile's flat layout."""
    index = {
        (feature.name, label): int(offset) + i
        for feature, offset in zip(profile.features, profile.offsets, strict=True)
        for i, label in enumerate(feature.labels)
    }
    out = np.zeros(int(profile.sizes.sum()), dtype=np.int64)
    for family in text_string_to_metric_families(text):
        if family.name != "regrow_feature_bin":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") == model and labels.get("version") == version:
                where = index.get((labels.get("feature", ""), labels.get("bin", "")))
                if where is not None:
                    out[where] = int(sample.value)
    return out


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
