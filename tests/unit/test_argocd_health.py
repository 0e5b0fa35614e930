"""The Argo CD health check (gitops/argocd/health.lua) in Lua 5.1, the Lua Argo CD runs, against fixtures
in Argo CD's health_test.yaml shape and against what the reconcilers really write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from regrow.api.modeldeployment import CanaryStep, RolloutSpec, RolloutStatus
from regrow.controller import canary, conditions, modeldeployment, trainingjob
from regrow.controller.conditions import Cond
from regrow.controller.kube import Obj
from regrow.manifests.common import PodDefaults
from tests.unit.test_api import _example, _with

ARGOCD = Path(__file__).resolve().parents[2] / "gitops" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def health(obj: Obj) -> dict[str, str]:
    """Run the check the way Argo CD does: the object as the global ``obj``, the script's return value."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return {key: result[key] for key in ("status", "message")}


def test_lua_is_5_1() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_fixtures(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_kind_and_outcome_has_a_fixture() -> None:
    seen = {(yaml.safe_load((ARGOCD / c["inputPath"]).read_text())["kind"], c["healthStatus"]["status"]) for c in CASES}
    for kind in ("TrainingJob", "ModelDeployment", "DriftPolicy"):
        assert {(kind, s) for s in ("Healthy", "Degraded", "Progressing")} <= seen, kind


def test_the_argocd_values_carry_the_script_for_each_kind() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-values.yaml").read_text())["configs"]["cm"]
    assert set(cm) == {f"resource.customizations.health.regrow.dev_{k}" for k in
                       ("TrainingJob", "ModelDeployment", "DriftPolicy")}  # fmt: skip
    assert all(script == SCRIPT for script in cm.values())


class NoApi:
    def get(self, path: str) -> Obj | None:
        raise AssertionError("an invalid spec is judged without the API")

    create = patch = list = get


def _stored(body: Obj, status: Obj) -> Obj:
    return {**body, "metadata": {**body["metadata"], "uid": "u1", "generation": 1}, "status": status}


def test_what_the_reconcilers_write_for_an_invalid_spec_is_degraded() -> None:
    md = _with(_example("ModelDeployment"), "spec.replicas", {"min": 5, "max": 2})
    md["metadata"]["namespace"] = "ml"
    serving = modeldeployment.Serving(NoApi(), PodDefaults(), None, None, None, canary.Memory())  # type: ignore[arg-type]
    result = modeldeployment.reconcile(_stored(md, {}), serving)
    verdict = health(_stored(md, result.status))
    assert verdict["status"] == "Degraded" and verdict["message"].startswith("InvalidSpec: ")

    tj = _with(_example("TrainingJob"), "spec.model.algorithm", "quantumForest")
    tj["metadata"]["namespace"] = "ml"
    result = trainingjob.reconcile(_stored(tj, {}), NoApi(), PodDefaults())  # type: ignore[arg-type]
    assert health(_stored(tj, result.status))["status"] == "Degraded"


@pytest.mark.parametrize(
    ("step", "outcome", "approval", "expected"),
    [(1, None, "Automatic", "Progressing"), (2, None, "Automatic", "Progressing"),
     (4, None, "Automatic", "Progressing"), (4, None, "Manual", "Suspended"),
     (1, "RolledBack", "Automatic", "Degraded"), (2, "RolledBack", "Automatic", "Degraded"),
     (4, "Promoted", "Automatic", "Healthy")],
)  # fmt: skip
def test_what_a_canary_writes_reads_as_argo_cd_expects(
    step: int, outcome: str | None, approval: str, expected: str
) -> None:
    steps = [CanaryStep(mirror=100, pause="1m"), CanaryStep(weight=25, pause="1m"), CanaryStep(weight=50, pause="1m")]
    spec = RolloutSpec(strategy="Canary", steps=steps, approval=approval)
    mirror = steps[step - 1].mirror if step <= len(steps) else None
    rollout = RolloutStatus(candidate="v2", stable="v1", started="2026-12-01T12:00:00Z", step=step, weight=50,
                            mirror=mirror, step_started="2026-12-01T12:00:00Z", outcome=outcome)  # fmt: skip
    ready = Cond("Ready", "True", "Serving", "3 replica(s) serving version v1")
    progressing = canary.progressing(spec, rollout, "v1") or Cond("Progressing", "False", "RolloutComplete")
    if outcome is None and step <= 2:
        assert progressing.reason == ("ShadowStep" if step == 1 else "CanaryStep")
    md = _example("ModelDeployment")
    assert health(_stored(md, conditions.status(_stored(md, {}), [ready, progressing])))["status"] == expected
