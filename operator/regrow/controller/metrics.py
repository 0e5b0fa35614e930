"""The operator's own Prometheus metrics.

Drift scores and retrain counts are read from the DriftPolicies' status in the control loop's cache at
scrape time: status is the record, so the metrics cannot disagree with it, and a deleted policy's series
disappear with it. The loop counts its reconciles and says whether this replica leads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT
from regrow.api.driftpolicy import RetrainOutcome
from regrow.controller import conditions
from regrow.controller.driftpolicy import DRIFT as DRIFT_DETECTED
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
        self.api_requests = Counter(
            "regrow_operator_api_requests",
            "Requests to the Kubernetes API server by verb (GET, WATCH, POST, PATCH, APPLY) and resource, kopf's "
            "watches aside.",
            ["verb", "resource"],
            registry=registry,
        )
        self.pod_probes = Counter(
            "regrow_operator_pod_probes",
            "Serving pods asked what they serve (GET /v2/models/<model>).",
            registry=registry,
        )


class DriftCollector(Collector):
    """``regrow_drift_score``, ``regrow_drift_threshold``, ``regrow_drift_detected``, ``regrow_retrains_total``
    and ``regrow_retrain_outcomes_total`` (every outcome, 0 until it happens: an alert on ``increase()`` needs
    the series before its first increase) from the DriftPolicies' status."""

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
        detected = GaugeMetricFamily(
            "regrow_drift_detected", "1 while a DriftPolicy's DriftDetected condition is True, else 0.", labels=labels
        )
        retrains = CounterMetricFamily("regrow_retrains", "TrainingJobs a DriftPolicy has created.", labels=labels)
        outcomes = CounterMetricFamily(
            "regrow_retrain_outcomes",
            "How a DriftPolicy's retrains ended: Serving, RolledBack, Rejected (by the gate), Published (not "
            "promoted), Failed or Deleted.",
            labels=[*labels, "outcome"],
        )
        for (plural, namespace, name), body in self.objects.copy().items():
            if plural != DRIFT_POLICY.plural:
                continue
            status = body.get("status") or {}
            ids = [namespace, name, ((body.get("spec") or {}).get("targetRef") or {}).get("name", "")]
            drift = conditions.find(status.get("conditions") or [], DRIFT_DETECTED) or {}
            detected.add_metric(ids, 1 if drift.get("status") == "True" else 0)
            retrains.add_metric(ids, status.get("retrains", 0))
            counts = status.get("retrainOutcomes") or {}
            for outcome in get_args(RetrainOutcome):
                outcomes.add_metric([*ids, outcome], counts.get(outcome, 0))
            check = status.get("lastCheck") or {}
            for feature in check.get("features") or []:
                for field, family in families.items():
                    for test, value in (feature.get(field) or {}).items():
                        number = _finite(value)
                        if number is not None:
                            family.add_metric([*ids, check.get("version", ""), feature["name"], test], number)
        yield from families.values()
        yield from (detected, retrains, outcomes)


class RolloutCollector(Collector):
    """Each ModelDeployment's canary from its status: the running one's step, weight and gates, and how many
    ended each way."""

    def __init__(self, objects: dict[tuple[str, str, str], Obj]) -> None:
        self.objects = objects

    def collect(self) -> Iterator[Metric]:
        ids = ["namespace", "deployment"]
        running = [*ids, "candidate", "stable"]
        step = GaugeMetricFamily("regrow_rollout_step", "The running canary's step (1-based; past the last: "
                                 "promoting or waiting for approval).", labels=running)  # fmt: skip
        weight = GaugeMetricFamily("regrow_rollout_weight", "Percent of the serving pods that are the candidate's.",
                                   labels=running)  # fmt: skip
        gates = {
            field: GaugeMetricFamily(
                f"regrow_rollout_gate_{field}", f"Each gate's {field} at the running step.", labels=[*running, "gate"]
            )
            for field in ("value", "threshold")
        }
        ended = CounterMetricFamily("regrow_rollouts", "Canaries that ended, by outcome (Promoted or RolledBack).",
                                    labels=[*ids, "outcome"])  # fmt: skip
        for (plural, namespace, name), body in self.objects.copy().items():
            if plural != MODEL_DEPLOYMENT.plural:
                continue
            status = body.get("status") or {}
            ended.add_metric([namespace, name, "Promoted"], status.get("promotions", 0))
            ended.add_metric([namespace, name, "RolledBack"], status.get("rollbacks", 0))
            rollout = status.get("rollout") or {}
            if not rollout or rollout.get("outcome"):
                continue
            labels = [namespace, name, rollout["candidate"], rollout["stable"]]
            step.add_metric(labels, rollout["step"])
            weight.add_metric(labels, rollout["weight"])
            for gate in rollout.get("gates") or []:
                for field, family in gates.items():
                    number = _finite(gate.get(field))
                    if number is not None:
                        family.add_metric([*labels, gate["name"]], number)
        yield from (step, weight, *gates.values(), ended)


def _finite(value: object) -> float | None:
    """A decimal string's value if it is a finite number (a p99 past the last bucket is "+Inf")."""
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None
