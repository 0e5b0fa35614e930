"""The operator's own Prometheus metrics.

Drift scores and retrain counts are read from the DriftPolicies' status in the control loop's cache at
scrape time: status is the record, so the metrics cannot disagree with it, and a deleted policy's series
disappear with it. The loop counts its reconciles and says whether this replica leads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from regrow.api import DRIFT_POLICY
from regrow.controller.kube import Obj


class Instruments:
    """What the control loop records as it runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "regrow_operator_reconciles",
            "Reconciles by kind and result (ok, conflict: the object changed meanwhile, error).",
            ["kind", "result"],
            registry=registry,
        )
        self.leader = Gauge(
            "regrow_operator_leader", "1 while this replica holds the Lease and reconciles.", registry=registry
        )


class DriftCollector(Collector):
    """``regrow_drift_score``, ``regrow_drift_threshold`` and ``regrow_retrains_total`` from the DriftPolicies'
    status."""

    def __init__(self, objects: dict[tuple[str, str, str], Obj]) -> None:
        self.objects = objects

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "policy", "deployment"]
        per_feature = [*labels, "version", "feature", "test"]
        families = {
            "scores": GaugeMetricFamily(
                "regrow_drift_score",
                "The last drift check's score per feature and test, against the serving version's reference profile.",
                labels=per_feature,
            ),
            "thresholds": GaugeMetricFamily(
                "regrow_drift_threshold",
                "The threshold the last check held each score against: calibrated to its sample sizes, or as set.",
                labels=per_feature,
            ),
        }
        retrains = CounterMetricFamily("regrow_retrains", "TrainingJobs a DriftPolicy has created.", labels=labels)
        for (plural, namespace, name), body in self.objects.copy().items():
            if plural != DRIFT_POLICY.plural:
                continue
            status = body.get("status") or {}
            ids = [namespace, name, ((body.get("spec") or {}).get("targetRef") or {}).get("name", "")]
            retrains.add_metric(ids, status.get("retrains", 0))
            check = status.get("lastCheck") or {}
            for feature in check.get("features") or []:
                for field, family in families.items():
                    for test, value in (feature.get(field) or {}).items():
                        number = float(value)
                        if math.isfinite(number):
                            family.add_metric([*ids, check.get("version", ""), feature["name"], test], number)
        yield from families.values()
        yield retrains
