"""The pydantic models: what they accept, what they reject, and how they read on the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from regrow import GROUP
from regrow.api import (
    DriftPolicySpec,
    InvalidSpec,
    ModelDeploymentSpec,
    TrainingJobSpec,
    parse_spec,
    validate_object,
)
from regrow.api.common import parse_duration
from regrow.api.driftpolicy import DriftTestType
from regrow.api.modeldeployment import RetryRequest
from regrow.api.trainingjob import Metric
from regrow.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
ALL_EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _example(kind: str) -> dict[str, Any]:
    return next(d for p in EXAMPLES for d in _docs(p) if d["kind"] == kind)


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_and_round_trips(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = _docs(path)
    for doc in (d for d in docs if d["apiVersion"].startswith(f"{GROUP}/")):
        spec = validate_object(doc)
        again = type(spec).model_validate(spec.to_wire())  # type: ignore[attr-defined]
        assert again == spec
    assert main(["validate", str(path)]) == 0  # a Secret beside them is skipped, not invalid
    said = capsys.readouterr().out.splitlines()
    assert len(said) == len(docs) and all(line.endswith(("valid", "not a regrow.dev resource")) for line in said)


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_every_labeller_an_example_names_has_its_secret_beside_it(path: Path) -> None:
    """So that `kubectl apply -f examples/` closes the loop: the clients label through a named labeller."""
    docs = _docs(path) if path.parent.name != "examples" else [d for p in EXAMPLES for d in _docs(p)]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    named = [who for d in docs if d["kind"] == "ModelDeployment" for who in d["spec"].get("labellers", [])]
    for who in named:
        assert who["secretName"] in secrets and all(
            len(v) >= 16 for v in secrets[who["secretName"]]["stringData"].values()
        )
    assert named or not any(d["kind"] == "DriftPolicy" for d in docs)  # a loop that retrains on labels names who labels


def test_examples_cover_all_three_kinds() -> None:
    assert {d["kind"] for p in EXAMPLES for d in _docs(p)} == {
        "TrainingJob",
        "ModelDeployment",
        "DriftPolicy",
        "Secret",
    }


def test_wire_names_are_camel_case() -> None:
    spec = parse_spec(ModelDeploymentSpec, _example("ModelDeployment")["spec"])
    wire = spec.to_wire()
    assert wire["autoscaling"] == {"targetCPUUtilizationPercentage": 70}
    assert wire["model"]["refreshInterval"] == "30s"
    assert wire["predictionLog"] == {
        "samplePercent": 10, "maxQueue": 10000, "retention": "720h", "labelHorizon": "720h"}  # fmt: skip


def test_defaults_fill_what_the_user_left_out() -> None:
    spec = parse_spec(
        TrainingJobSpec,
        {
            "dataset": {"uri": "s3://data/iris.csv", "target": "y"},
            "model": {"algorithm": "ridge"},
            "output": {"registry": "s3://models/prod", "modelName": "houses"},
        },
    )
    assert spec.dataset.format == "csv"
    assert spec.evaluation.holdout_percent == 20
    assert spec.backoff_limit == 1
    assert spec.metric is Metric.RMSE  # regression default
    policy = parse_spec(DriftPolicySpec, {"targetRef": {"name": "iris"}})
    assert policy.tests is None and policy.thresholds() == {DriftTestType.PSI: None, DriftTestType.CHI_SQUARE: None}
    assert policy.source.type == "Pods"


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with the dotted ``path`` set to ``value`` (or removed when value is ...)."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(doc))
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out


INVALID = [
    ("ModelDeployment", "spec.replicas.min", 5, "replicas.min (5) must not exceed replicas.max (4)"),
    ("ModelDeployment", "spec.model.version", "abc123", "set exactly one of model.alias and model.version"),
    ("ModelDeployment", "spec.model.alias", ..., "set exactly one of model.alias and model.version"),
    (
        "ModelDeployment",
        "spec.replicas.min",
        0,
        "spec.replicas.min: Input should be greater than or equal to 1",
    ),
    (
        "ModelDeployment",
        "spec.model.registry",
        "http://x",
        "spec.model.registry: String should match pattern",
    ),
    (
        "ModelDeployment",
        "spec.model.refreshInterval",
        "5 minutes",
        "spec.model.refreshInterval: String should",
    ),
    ("ModelDeployment", "spec.replicaz", 3, "spec.replicaz: Extra inputs are not permitted"),
    ("TrainingJob", "spec.dataset", ..., "spec.dataset: Field required"),
    ("TrainingJob", "spec.model.algorithm", "xgboost", "spec.model.algorithm: Input should be"),
    ("TrainingJob", "spec.evaluation.metric", "rmse", "metric rmse is for regression but algorithm"),
    ("TrainingJob", "spec.evaluation.holdoutPercent", 90, "less than or equal to 50"),
    (
        "TrainingJob",
        "spec.promote.minImprovement",
        0.01,
        "spec.promote.minImprovement: Input should be a valid string",
    ),
    ("DriftPolicy", "spec.driftShare", "1.5", "spec.driftShare: String should match pattern"),
    ("DriftPolicy", "spec.tests", [{"type": "psi", "threshold": "1"}] * 2, "each test type may appear once"),
    ("DriftPolicy", "spec.source", {"type": "Prometheus"}, "source.prometheus is required"),
    ("DriftPolicy", "spec.retrain.approval", "Sometimes", "spec.retrain.approval: Input should be"),
    (
        "TrainingJob",
        "spec.storage",
        {"volumeClaimName": "d", "mountPath": "/var/lib/regrow/../../proc"},
        "may not contain . or .. segments",
    ),
    ("TrainingJob", "spec.storage", {"volumeClaimName": "d", "mountPath": "/var//lib"}, "String should match"),
    ("ModelDeployment", "spec.rollout", {"strategy": "Canary"}, "rollout.strategy Canary needs rollout.steps"),
    ("ModelDeployment", "spec.rollout", {"steps": [{"weight": 20, "pause": "1m"}]}, "apply to strategy Canary only"),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"weight": 50, "pause": "1m"}, {"weight": 20, "pause": "1m"}]},
        "weights must rise: [50, 20]",
    ),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"mirror": 10, "pause": "1m"}, *[{"weight": 50, "pause": "1m"}] * 2]},
        "weights must rise: [50, 50]",
    ),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"weight": 20}]},
        "a canary step (weight 20) needs a pause, minRequests or both",
    ),
    ("ModelDeployment", "spec.rollout", {"strategy": "Canary", "steps": [{"weight": 100, "pause": "1m"}]}, "99"),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"weight": 20, "mirror": 50, "pause": "1m"}]},
        "a canary step sets exactly one of weight and mirror",
    ),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"pause": "1m"}]},
        "a canary step sets exactly one of weight and mirror",
    ),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"weight": 20, "pause": "1m"}, {"mirror": 50, "pause": "1m"}]},
        "shadow steps (mirror) come before any step with a weight",
    ),
    (
        "ModelDeployment",
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"mirror": 50}]},
        "a canary step (mirror 50%) needs a pause, minRequests or both",
    ),
    ("ModelDeployment", "spec.rollout", {"strategy": "Canary", "steps": [{"mirror": 101, "pause": "1m"}]}, "100"),
    ("ModelDeployment", "spec.rollout", {"strategy": "Canary", "steps": [{"mirror": 0, "pause": "1m"}]}, "1"),
    ("ModelDeployment", "spec.rollout.analysis", {"maxDisagreement": "-1"}, "maxDisagreement: String should match"),
    (
        "ModelDeployment",
        "spec.rollout.analysis",
        {"maxErrorShare": 0.01},
        "spec.rollout.analysis.maxErrorShare: Input should be a valid string",
    ),
]


def test_the_readmes_canary_example_is_valid() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- canary-example -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = validate_object(yaml.safe_load(block))
    assert isinstance(spec, ModelDeploymentSpec) and spec.rollout.strategy == "Canary"
    assert [s.weight for s in spec.rollout.steps] == [25, 50] and spec.rollout.analysis.max_p99_seconds == "0.25"
    shadow = text.split("<!-- shadow-example -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    md = _with(_example("ModelDeployment"), "spec.rollout", yaml.safe_load(shadow)["rollout"])
    shadowed = validate_object(md)
    assert isinstance(shadowed, ModelDeploymentSpec) and shadowed.rollout.mirrors
    assert [(s.mirror, s.weight) for s in shadowed.rollout.steps] == [(100, None), (None, 25)]


@pytest.mark.parametrize(("kind", "path", "value", "message"), INVALID)
def test_invalid_specs_are_rejected_with_a_readable_message(kind: str, path: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        validate_object(_with(_example(kind), path, value))
    assert message in str(caught.value)


def test_validate_object_rejects_foreign_kinds() -> None:
    with pytest.raises(InvalidSpec, match="not a regrow resource"):
        validate_object({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}})


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1h30m", 5400), ("2h", 7200)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "-5s", "1.5h"])
def test_parse_duration_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_labellers_need_a_prediction_log_and_names_of_their_own() -> None:
    crm = {"name": "crm", "secretName": "crm-labeller"}
    md = _with(_example("ModelDeployment"), "spec.labellers", [crm, {"name": "desk", "secretName": "desk"}])
    assert [who.name for who in validate_object(md).labellers] == ["crm", "desk"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidSpec, match="labellers label logged predictions"):
        validate_object(_with(md, "spec.predictionLog", {"samplePercent": 0}))
    with pytest.raises(InvalidSpec, match="each name once"):
        validate_object(_with(md, "spec.labellers", [crm, crm]))
    with pytest.raises(InvalidSpec, match="labellers"):
        validate_object(_with(md, "spec.labellers", [{"name": "CRM!", "secretName": "crm"}]))


def test_a_retention_is_an_hour_at_least_and_an_empty_reason_is_none() -> None:
    md = _example("ModelDeployment")
    for field in ("retention", "labelHorizon"):
        with pytest.raises(InvalidSpec, match=f"predictionLog.{field} is 1h at least"):
            validate_object(_with(md, "spec.predictionLog", {"samplePercent": 10, field: "59m"}))
    old_cli = {"version": "v2", "actor": "ana", "reason": "", "time": "2026-12-07T20:00:00Z"}  # as it wrote them
    assert RetryRequest.model_validate(old_cli).reason is None  # never an empty string in status


def test_a_quality_gate_needs_a_prediction_log_whose_ids_clients_can_label() -> None:
    canary = {"strategy": "Canary", "steps": [{"weight": 20, "pause": "1m"}], "analysis": {"maxQualityDrop": "0.05"}}
    md = _with(_example("ModelDeployment"), "spec.rollout", canary)
    assert isinstance(validate_object(md), ModelDeploymentSpec)  # the example logs predictions
    with pytest.raises(InvalidSpec, match="maxQualityDrop grades predictions by their labels"):
        validate_object(_with(md, "spec.predictionLog", {"samplePercent": 0}))
