"""Prometheus metrics of the serving process.

Feature bins are counted per request into a numpy vector (one vectorised ``bincount``) and turned into
``regrow_feature_bin_total`` only when Prometheus scrapes, so counting costs no per-feature Python work
on the request path.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from regrow.serving.model import LoadedModel

FLUSH_ROWS = 8192
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class FeatureBins:
    """Live counts of one model version's inputs in its reference profile's bins.

    Requests only queue their rows; the rows are binned together, vectorised, once ``FLUSH_ROWS`` have
    queued and at every scrape. The serving event loop is the only caller, so no lock is needed.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.counts = np.zeros(int(model.profile.sizes.sum()), dtype=np.int64)
        self.pending: list[npt.NDArray[np.float32]] = []
        self.pending_rows = 0

    def observe(self, x: npt.NDArray[np.float32]) -> None:
        self.pending.append(x)
        self.pending_rows += len(x)
        if self.pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            batch = np.concatenate(self.pending)
            self.pending, self.pending_rows = [], 0
            self.counts += self.model.profile.bin_counts(batch)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_feature_bin",
            "Input values counted into the bins of the model's reference profile.",
            labels=["model", "version", "feature", "bin"],
        )
        self.flush()
        for feature, part in zip(self.model.profile.features, self.model.profile.split(self.counts), strict=True):
            for label, value in zip(feature.labels, part.tolist(), strict=True):
                family.add_metric([self.model.name, self.model.version, feature.name, label], value)
        yield family

    def describe(self) -> list[Metric]:
        return []


class ServingMetrics:
    def __init__(self, model: LoadedModel, feature_bins: bool = True) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter(
            "regrow_inference_requests", "Inference requests by protocol and status code.",
            [*labels, "protocol", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "regrow_inference_request_duration_seconds", "Time to answer an inference request.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rows = Counter("regrow_inference_rows", "Rows predicted.", labels, registry=self.registry)
        self.in_flight = Gauge(
            "regrow_inference_in_flight_requests", "Requests being answered.", registry=self.registry
        )
        info = Gauge(
            "regrow_model_info", "The model version this process serves.", [*labels, "uri"], registry=self.registry
        )
        info.labels(model.name, model.version, model.uri).set(1)
        self.bins = FeatureBins(model) if feature_bins else None
        if self.bins is not None:
            self.registry.register(self.bins)
        self._latency = self.latency.labels(model.name, model.version)
        self._rows = self.rows.labels(model.name, model.version)
        self._label_values = (model.name, model.version)
        self._requests: dict[tuple[str, int], Counter] = {}

    def request(self, protocol: str, code: int, seconds: float, x: npt.NDArray[np.float32] | None) -> None:
        counter = self._requests.get((protocol, code))
        if counter is None:
            counter = self._requests[protocol, code] = self.requests.labels(*self._label_values, protocol, str(code))
        counter.inc()
        self._latency.observe(seconds)
        if x is not None:
            self._rows.inc(len(x))
            if self.bins is not None:
                self.bins.observe(x)
