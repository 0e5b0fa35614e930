"""``spec.pod``: what it adds to every pod regrow makes for a spec (serving, canary and shadow Deployments, the Job
that moves an alias back, the training Job), what the API refuses, and what the operator allows."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from regrow.api import ModelDeploymentSpec, TrainingJobSpec, parse_spec
from regrow.api.pod import PodOptions
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.serving import alias_job, deployment, selector
from regrow.manifests.training import training_job
from tests.unit.test_api import _example

POD: dict[str, Any] = {
    "nodeSelector": {"node.kubernetes.io/instance-type": "m5.large"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": {"team": "ml"}}}}]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "ml-serving",
    "serviceAccountName": "s3-reader",
    "imagePullSecrets": [{"name": "registry"}],
    "labels": {"team": "ml", "cost-center.example.com/id": "42"},
    "annotations": {"example.com/owner": "ml-platform"},
}  # fmt: skip
MD = Owner("ModelDeployment", "iris", "ml", "u1")
TJ = Owner("TrainingJob", "iris-v1", "ml", "u2")


def _templates(pod: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every pod template regrow makes, for specs with ``pod`` (None: without it)."""
    md, tj = _example("ModelDeployment")["spec"], _example("TrainingJob")["spec"]
    if pod is not None:
        md, tj = {**md, "pod": pod}, {**tj, "pod": pod}
    serving, training = parse_spec(ModelDeploymentSpec, md), parse_spec(TrainingJobSpec, tj)
    defaults = PodDefaults()
    return {
        "stable": deployment(MD, serving, defaults, "0123456789abcdef")["spec"]["template"],
        "canary": deployment(MD, serving, defaults, "0123456789abcdef", canary_replicas=1)["spec"]["template"],
        "shadow": deployment(MD, serving, defaults, "0123", canary_replicas=1, shadow_percent=5)["spec"]["template"],
        "alias": alias_job(MD, serving, defaults, ("a", "b"), "n")["spec"]["template"],
        "training": training_job(TJ, training, defaults)["spec"]["template"],
    }


def test_every_pod_regrow_makes_gets_the_options_and_keeps_its_own() -> None:
    plain, placed = _templates(None), _templates(POD)
    for what, template in placed.items():
        before = copy.deepcopy(plain[what])
        spec = template["spec"]
        assert spec["nodeSelector"] == POD["nodeSelector"], what
        assert spec["tolerations"] == [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}], what
        assert spec["affinity"] == POD["affinity"] and spec["priorityClassName"] == "ml-serving", what
        assert spec["serviceAccountName"] == "s3-reader" and spec["automountServiceAccountToken"] is True, what
        assert spec["imagePullSecrets"] == [{"name": "registry"}], what
        (spread,) = spec["topologySpreadConstraints"]  # with no selector: spread the pods of its own workload
        assert spread["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), what
        assert template["metadata"]["labels"] == {**POD["labels"], **before["metadata"]["labels"]}, what
        assert template["metadata"]["annotations"] == {**POD["annotations"],
                                                      **before["metadata"].get("annotations", {})}, what  # fmt: skip
        assert spec["containers"] == before["spec"]["containers"], what
    assert placed["stable"]["spec"]["topologySpreadConstraints"][0]["labelSelector"] == {
        "matchLabels": selector(MD, "predictor")
    }


def test_without_options_or_with_none_set_the_pods_are_as_they_were() -> None:
    """An upgrade, or an empty pod block, rolls no pod: the templates are the same, and no token is mounted."""
    assert _templates({}) == _templates(None)
    for template in _templates(None).values():
        assert template["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ({"labels": {"app.kubernetes.io/name": "x"}}, "may not set the operator's own keys: app.kubernetes.io/name"),
        ({"labels": {"regrow.dev/model-version": "v"}}, "operator's own keys"),
        ({"annotations": {"prometheus.io/port": "1"}}, "operator's own keys: prometheus.io/port"),
        ({"labels": {"team": "not a value"}}, "pod.labels.team"),
        ({"nodeSelector": {"-bad": "x"}}, "pod.nodeSelector"),
        ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "without a key must have operator Exists"),
        ({"tolerations": [{"key": "k", "operator": "Exists", "value": "x"}]}, "operator Exists has no value"),
        ({"tolerations": [{"key": "k", "effect": "Sometimes"}]}, "pod.tolerations.0.effect"),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}},
         "nodeSelectorTerms"),
        ({"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]},
         "maxSkew"),
        ({"serviceAccountName": "Not_A_Name"}, "pod.serviceAccountName"),
        ({"hostNetwork": True}, "pod.hostNetwork: Extra inputs are not permitted"),
        ({"annotations": {"container.apparmor.security.beta.kubernetes.io/server": "unconfined"}},
         "may not set the pods' AppArmor or seccomp profile: container.apparmor.security.beta.kubernetes.io/server"),
        ({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}, "AppArmor or seccomp profile"),
        ({"annotations": {"container.seccomp.security.alpha.kubernetes.io/trainer": "runtime/default", "team": "a"}},
         "seccomp profile: container.seccomp.security.alpha.kubernetes.io/trainer"),
    ],
)  # fmt: skip
def test_the_api_refuses_what_kubernetes_would_and_the_operators_own_keys(pod: dict[str, Any], message: str) -> None:
    for kind, spec_model in (("ModelDeployment", ModelDeploymentSpec), ("TrainingJob", TrainingJobSpec)):
        with pytest.raises(ValueError, match="pod") as error:
            parse_spec(spec_model, {**_example(kind)["spec"], "pod": pod})
        assert message in str(error.value), (kind, str(error.value))


def test_service_accounts_and_tolerations_only_as_the_chart_allows() -> None:
    def refused(defaults: PodDefaults, pod: dict[str, Any], namespace: str = "ml") -> str | None:
        try:
            defaults.check_pod(PodOptions.model_validate(pod), namespace)
        except ValueError as error:
            return str(error)
        return None

    account, everything = {"serviceAccountName": "s3-reader"}, {"tolerations": [{"operator": "Exists"}]}
    gpu = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    none = PodDefaults()
    assert "allowedServiceAccounts: none" in (refused(none, account) or "")
    assert "tolerating taint nvidia.com/gpu is not allowed" in (refused(none, gpu) or "")
    assert "tolerating every taint" in (refused(none, everything) or "")
    assert refused(none, {"nodeSelector": {"a": "b"}, "priorityClassName": "p"}) is None  # the namespace's own
    anywhere, here = (
        PodDefaults(allowed_service_accounts=("s3-reader",)),
        PodDefaults(allowed_service_accounts=("ml/s3-reader",)),
    )
    assert refused(anywhere, account, "other") is None and refused(here, account) is None
    assert "in namespace other" in (refused(here, account, "other") or "")
    keyed, any_ = PodDefaults(allowed_tolerations=("nvidia.com/gpu",)), PodDefaults(allowed_tolerations=("*",))
    assert refused(keyed, gpu) is None and refused(keyed, everything) is not None
    assert refused(any_, everything) is None and refused(any_, gpu) is None


def test_options_are_typed_as_kubernetes_types_them() -> None:
    with pytest.raises(ValidationError):
        PodOptions.model_validate({"tolerations": [{"key": "k", "tolerationSeconds": -1}]})
    options = PodOptions.model_validate({"tolerations": [{"key": "k", "operator": "Exists"}]})
    assert options.template() == {"tolerations": [{"key": "k", "operator": "Exists"}]}
