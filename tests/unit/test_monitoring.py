"""The chart's alert rules under `promtool test rules`: each alert fires on the series that should fire it,
with its annotations rendered, and stays quiet on the others. ``queries`` lists every query the chart ships,
which tests/e2e/test_demo.py runs against a real Prometheus scraping a real loop."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, _missing

RULES = ROOT / "charts/regrow/files/rules.yaml"
DASHBOARD = ROOT / "charts/regrow/files/dashboard.json"
ML = {"namespace": "ml", "policy": "iris", "deployment": "iris"}


def _alert(eval_time: str, name: str, *fired: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": list(fired)}


def _fired(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}


DRIFT = _fired({**ML, "severity": "warning"}, "Drift on ml/iris",
               "DriftPolicy iris finds that the live traffic of iris moved away from the serving version's training "
               "data; it retrains as its spec.retrain says (kubectl -n ml describe driftpolicy iris).")  # fmt: skip
RETRAIN = _fired({**ML, "severity": "warning"}, "A retrain of ml/iris failed",
                 "A TrainingJob that DriftPolicy iris created failed in the last hour: the drifted model still serves. "
                 "Its status says why (regrow status iris -n ml).")  # fmt: skip
ROLLBACK = _fired(
    {"namespace": "ml", "deployment": "iris", "severity": "warning"},
    "A canary of ml/iris rolled back",
    "A candidate version failed a gate of its canary on live traffic in the last hour and was rolled "
    "back; the stable version serves. status.rollout names the gate (regrow status iris -n ml).",
)
ERRORS = [
    _fired({"namespace": "ml", "model": "iris", "version": v, "severity": "critical"}, f"ml/iris {v} answers 5xx",
           f"{share} of the inference answers of version {v} were server errors over the last 5 minutes (refused "
           "requests, 4xx and load shedding's 429s, are not counted).")
    for v, share in (("v2", "9.091%"), ("v4", "6.25%"))
]  # fmt: skip
LEADER = _fired({"severity": "critical"}, "No regrow operator leads",
                "No operator replica has held the Lease for 5 minutes (or none is scraped): nothing reconciles "
                "TrainingJobs, ModelDeployments or DriftPolicies, and no drift is checked.")  # fmt: skip


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inside = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inside}}}", "values": values}


WINE = {"namespace": "ml", "policy": "wine", "deployment": "wine"}
TESTS: list[dict[str, Any]] = [
    {  # iris drifts from minute 2; wine never does
        "input_series": [
            _series("regrow_drift_detected", ML, "0 0 1x10"),
            _series("regrow_drift_detected", WINE, "0x12"),
        ],
        "alert_rule_test": [_alert("2m", "RegrowDriftDetected"), _alert("4m", "RegrowDriftDetected", DRIFT)],
    },
    {  # a retrain of iris fails at minute 3; wine's retrains serve; an hour on, the failure is old news
        "input_series": [
            _series("regrow_retrain_outcomes_total", {**ML, "outcome": "Failed"}, "0 0 0 1x80"),
            _series("regrow_retrain_outcomes_total", {**ML, "outcome": "Serving"}, "0x83"),
            _series("regrow_retrain_outcomes_total", {**WINE, "outcome": "Failed"}, "0x83"),
            _series("regrow_retrain_outcomes_total", {**WINE, "outcome": "Serving"}, "0 1 2 3x80"),
        ],
        "alert_rule_test": [
            _alert("2m", "RegrowRetrainFailed"),
            _alert("5m", "RegrowRetrainFailed", RETRAIN),
            _alert("70m", "RegrowRetrainFailed"),
        ],
    },
    {  # iris's canary rolls back at minute 3; wine's are promoted
        "input_series": [
            _series(
                "regrow_rollouts_total",
                {"namespace": "ml", "deployment": "iris", "outcome": "RolledBack"},
                "0 0 0 1x20",
            ),
            _series(
                "regrow_rollouts_total", {"namespace": "ml", "deployment": "wine", "outcome": "RolledBack"}, "0x23"
            ),
            _series(
                "regrow_rollouts_total", {"namespace": "ml", "deployment": "wine", "outcome": "Promoted"}, "0 1 2 3x20"
            ),
        ],
        "alert_rule_test": [
            _alert("2m", "RegrowRolloutRolledBack"),
            _alert("5m", "RegrowRolloutRolledBack", ROLLBACK),
        ],
    },
    {  # v2 answers 1 in 11 with a 500 (9%); v1 1 in 101 (1%); v3 never errs and has no 5xx series at all; v4 answers
        # 1 in 16 with a 500 (6%), beside ten times as many 400s that must not dilute it
        "input_series": [
            _series(
                "regrow_inference_requests_total",
                {"namespace": "ml", "model": "iris", "version": v, "code": c},
                f"0+{n}x20",
            )
            for v, c, n in (
                ("v2", "200", 600),
                ("v2", "500", 60),
                ("v1", "200", 600),
                ("v1", "500", 6),
                ("v3", "200", 600),
                ("v4", "200", 600),
                ("v4", "500", 40),
                ("v4", "400", 6000),
                ("v4", "429", 600),
            )
        ],
        "alert_rule_test": [_alert("4m", "RegrowServingErrors"), _alert("12m", "RegrowServingErrors", *ERRORS)],
    },
    {  # the only replica loses the Lease at minute 2
        "input_series": [_series("regrow_operator_leader", {"pod": "regrow-0"}, "1 1 0x10")],
        "alert_rule_test": [_alert("5m", "RegrowOperatorNotLeading"), _alert("8m", "RegrowOperatorNotLeading", LEADER)],
    },
    {  # a replica leads: quiet; then none is scraped at all
        "input_series": [
            _series("regrow_operator_leader", {"pod": "regrow-0"}, "1x3"),
            _series("regrow_operator_leader", {"pod": "regrow-1"}, "0x20"),
        ],
        "alert_rule_test": [_alert("3m", "RegrowOperatorNotLeading")],
    },
    {
        "input_series": [_series("up", {"job": "other"}, "1x10")],
        "alert_rule_test": [_alert("6m", "RegrowOperatorNotLeading", LEADER)],
    },
]


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        _missing("the alert rules' tests need promtool, from Debian's prometheus package")
    return str(found)


def test_every_alert_fires_when_it_should_and_only_then(promtool: str, tmp_path: Path) -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in TESTS for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == alerts, "every alert has a case that fires it"
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    cases = tmp_path / "cases.yaml"
    body = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{"interval": "1m", **t} for t in TESTS]}
    cases.write_text(yaml.safe_dump(body, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def queries() -> list[tuple[str, str]]:
    """Every query the chart ships, by where it is: each dashboard target's, and each rule's without its
    comparison (a rule is a query and one comparison with a number)."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            match = re.fullmatch(r"(.*?)\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*", rule["expr"], re.DOTALL)
            assert match is not None, f"{rule['alert']}: not a query and one comparison"
            found.append((f"alert {rule['alert']}", match[1]))
    return found
