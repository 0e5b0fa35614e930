"""Prometheus metrics of the serving process.

Feature bins are counted per request into a numpy vector (one vectorised ``bincount``) and turned into
``regrow_feature_bin_total`` only when Prometheus scrapes, so counting costs no per-feature Python work
on the request path.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from regrow.inference import Batch, rows
from regrow.serving.model import LoadedModel
from regrow.telemetry import LATENCY_BUCKETS, Refusal, answered

FLUSH_ROWS = 8192
RECOVER_SECONDS = 10.0  # after a failed flush, not ready this long: out of the Service's endpoints, it recovers
log = logging.getLogger(__name__)


class FeatureBins:
    """Live counts of one model version's inputs, and of its predictions (``__prediction__``), in its
    reference profile's bins.

    Requests only queue their rows and outputs; they are binned together, vectorised, once ``FLUSH_ROWS``
    have queued and at every scrape. The serving event loop is the only caller, so no lock is needed. A flush
    that fails (out of memory, say) drops what was queued and counts it; the request that set it off is answered
    all the same, and the server says it is not ready for RECOVER_SECONDS after (see ``ServingMetrics.counting``).
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        profile = model.profile
        self.counts = np.zeros(int(profile.sizes.sum()), dtype=np.int64)
        self.predicted_counts = np.zeros(len(profile.prediction.counts) if profile.prediction else 0, dtype=np.int64)
        self.pending: list[npt.NDArray[np.float32]] = []  # a float matrix per request
        # A model of columns: each column's values as Python objects (str and float, which the garbage collector
        # does not track: an array per request and column made its collections and the flush take ~50 ms).
        self.pending_columns: list[list[Any]] = [[] for _ in profile.features]
        self.pending_outputs: list[npt.NDArray[np.generic]] = []
        self.pending_rows = 0
        self.failed_at: float | None = None  # when a flush last failed (time.monotonic), until one succeeds
        self.dropped = 0  # rows dropped by failed flushes

    def observe(self, x: Batch, outputs: npt.NDArray[np.generic] | None = None) -> None:
        if isinstance(x, list):
            for pending, column in zip(self.pending_columns, x, strict=True):
                pending.extend(column.tolist())
        else:
            self.pending.append(x)
        if outputs is not None:
            self.pending_outputs.append(outputs)
        self.pending_rows += rows(x)
        if self.pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        profile = self.model.profile
        try:
            if self.pending:
                self.counts += profile.bin_counts(np.concatenate(self.pending))
            elif self.pending_columns[0]:
                columns = [np.asarray(c, dtype=np.float32 if f.numeric else object)
                           for c, f in zip(self.pending_columns, profile.features, strict=True)]  # fmt: skip
                self.counts += profile.column_counts(columns)
            if profile.prediction is not None and self.pending_outputs:
                self.predicted_counts += profile.prediction.count(np.concatenate(self.pending_outputs))
            if self.pending_rows:
                self.failed_at = None
        except Exception:  # whatever it was, the queued rows go and serving goes on
            self.failed_at, self.dropped = time.monotonic(), self.dropped + self.pending_rows
            log.exception("Could not count %d rows into the feature bins: dropped them", self.pending_rows)
        finally:
            self.pending, self.pending_outputs, self.pending_rows = [], [], 0
            self.pending_columns = [[] for _ in profile.features]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_feature_bin",
            "Input values, and predictions (feature __prediction__), counted into the bins of the model's "
            "reference profile.",
            labels=["model", "version", "feature", "bin"],
        )
        self.flush()
        dropped = CounterMetricFamily(
            "regrow_feature_bin_dropped_rows", "Rows the feature bins failed to count, and dropped.",
            labels=["model", "version"],
        )  # fmt: skip
        dropped.add_metric([self.model.name, self.model.version], self.dropped)
        yield dropped
        profile = self.model.profile
        parts = [*zip(profile.features, profile.split(self.counts), strict=True)]
        if profile.prediction is not None:
            parts.append((profile.prediction, self.predicted_counts))
        for feature, part in parts:
            for label, value in zip(feature.labels, part.tolist(), strict=True):
                family.add_metric([self.model.name, self.model.version, feature.name, label], value)
        yield family

    def describe(self) -> list[Metric]:
        return []


class Latency:
    """A latency histogram in plain Python numbers (LATENCY_BUCKETS, then +Inf), for a collector to export."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: upper bounds are inclusive
        self.seconds += seconds

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        bounds = [floatToGoString(b) for b in (*LATENCY_BUCKETS, math.inf)]  # type: ignore[no-untyped-call]
        family.add_metric(labels, list(zip(bounds, itertools.accumulate(self.buckets), strict=True)), self.seconds)


class RequestStats:
    """Requests by protocol and code, the refused ones by reason, the latency of those the model answered or
    failed (2xx, 5xx), and the rows predicted, for one model version.

    Kept in plain Python numbers by the event loop (the only writer) and turned into metric families at
    each scrape: no lock and no metric child per request.
    """

    def __init__(self, model: LoadedModel, bins: FeatureBins | None) -> None:
        self.labels = [model.name, model.version]
        self.bins = bins
        self.codes: collections.Counter[tuple[str, int]] = collections.Counter()
        self.refused: collections.Counter[tuple[str, Refusal]] = collections.Counter()
        self.latency = Latency()
        self.rows = 0

    def request(
        self, protocol: str, code: int, seconds: float, x: Batch | None, outputs: npt.NDArray[np.generic] | None = None,
        refusal: Refusal = "malformed",
    ) -> None:  # fmt: skip
        """Count one inference request; ``refusal`` says why one that was not ``answered`` was refused."""
        self.codes[protocol, code] += 1
        if not answered(code):  # it reached no model: how fast it was refused says nothing of the version
            self.refused[protocol, refusal] += 1
            return
        self.latency.observe(seconds)
        if x is not None:
            self.rows += rows(x)
            if self.bins is not None:
                self.bins.observe(x, outputs)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "regrow_inference_requests", "Inference requests by protocol and status code.",
            labels=["model", "version", "protocol", "code"],
        )  # fmt: skip
        for (protocol, code), count in sorted(self.codes.items()):
            requests.add_metric([*self.labels, protocol, str(code)], count)
        refused = CounterMetricFamily(
            "regrow_inference_refused_requests", "Inference requests refused (4xx), by protocol and reason: "
            "malformed, columns, values, rows or overloaded.",
            labels=["model", "version", "protocol", "reason"],
        )  # fmt: skip
        for (protocol, reason), count in sorted(self.refused.items()):
            refused.add_metric([*self.labels, protocol, reason], count)
        latency = HistogramMetricFamily(
            "regrow_inference_request_duration_seconds",
            "Time to answer an inference request the model answered or failed (2xx, 5xx; refused ones are left "
            "out), from its first byte.",
            labels=["model", "version"],
        )
        self.latency.add_to(latency, self.labels)
        rows = CounterMetricFamily("regrow_inference_rows", "Rows predicted.", labels=["model", "version"])
        rows.add_metric(self.labels, self.rows)
        yield from (requests, refused, latency, rows)

    def describe(self) -> list[Metric]:
        return []


class ServingMetrics:
    def __init__(
        self, model: LoadedModel, in_flight: Callable[[], int], feature_bins: bool = True,
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        self.bins = bins = FeatureBins(model) if feature_bins else None
        self.stats = RequestStats(model, bins)
        self.registry.register(self.stats)
        if bins is not None:
            self.registry.register(bins)
        Gauge(
            "regrow_inference_in_flight_requests", "HTTP requests received in part or whole, not answered yet.",
            registry=self.registry,
        ).set_function(in_flight)  # fmt: skip
        Gauge(
            "regrow_event_loop_lag_seconds", "How late the server's event loop ran its last timer: the load on it.",
            registry=self.registry,
        ).set_function(lag)  # fmt: skip
        Gauge(
            "regrow_model_info", "The model version this process serves.", ["model", "version", "uri"],
            registry=self.registry,
        ).labels(model.name, model.version, model.uri).set(1)  # fmt: skip
        self.request = self.stats.request

    def counting(self) -> bool:
        """Whether the feature bins count: not within RECOVER_SECONDS of a failed flush."""
        failed = self.bins.failed_at if self.bins is not None else None
        return failed is None or time.monotonic() - failed > RECOVER_SECONDS
