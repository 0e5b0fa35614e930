"""The Helm chart through Helm's own engine (helm-sdkpy carries Helm's library): lint, values checked by
values.schema.json, manifests rendered by a real install into the API server, and the operator running with
exactly the permissions the chart grants it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from regrow import API_VERSION
from regrow.api import ModelDeploymentSpec, parse_spec
from regrow.controller.kube import Kube, Obj, path
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.serving import deployment
from tests.cluster import Cluster
from tests.conftest import ROOT, Operator
from tests.helpers import wait_for
from tests.integration.test_operator import PLURALS, _apply_examples
from tests.integration.test_trainingjob_controller import _finish_pod, _pod_of
from tests.unit.test_api import _example
from tests.unit.test_trainingjob_reconciler import restricted_violations

helm = pytest.importorskip("helm_sdkpy", reason="helm-sdkpy is installed by `make dev`")
CHART = str(ROOT / "charts" / "regrow")
pytestmark = pytest.mark.usefixtures("crds")


def _config(cluster: Cluster, namespace: str) -> Any:
    return helm.Configuration(namespace=namespace, kubeconfig=str(cluster.kubeconfig))


def _install(cluster: Cluster, namespace: str, release: str, values: Obj) -> list[Obj]:
    """Install the chart (without waiting for pods: no kubelet here) and return what Helm rendered."""
    config = _config(cluster, namespace)
    asyncio.run(helm.Install(config).run(release, CHART, values=values, wait=False, timeout=60))
    manifest = asyncio.run(helm.Status(config).run(release))["manifest"]
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"regrow-{uuid.uuid4().hex[:6]}"
    yield name
    with contextlib.suppress(helm.HelmError):  # not installed: a values test
        asyncio.run(helm.Uninstall(_config(cluster, namespace)).run(name, wait=False))


def test_the_chart_lints_clean(cluster: Cluster, namespace: str) -> None:
    result = asyncio.run(helm.Lint(_config(cluster, namespace)).run(CHART))
    assert result["Errors"] is None
    assert [m for m in result["Messages"] if m["Severity"] >= 2] == []  # no warnings or errors


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replica": 2}, "replica"),
        ({"image": {"repo": "x"}}, "repo"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"metrics": {"port": 8080}}, "port"),
        ({"metrics": {"servingPort": 8080}}, "servingPort"),
        ({"drift": {"prometheusUrls": ["http://prometheus:9090/?x=1"]}}, "prometheusUrls"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"resources": {"limits": {"gpu": 1}}}, "gpu"),
        ({"demoStore": {"accessMode": "ReadOnlyMany"}}, "accessMode"),
        ({"clusterDomain": "cluster.local. evil.example"}, "clusterDomain"),
    ],
)
def test_bad_values_fail_the_install_naming_the_key(
    cluster: Cluster, namespace: str, release: str, values: Obj, named: str
) -> None:
    with pytest.raises(helm.HelmError) as failure:
        _install(cluster, namespace, release, values)
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert named in str(failure.value)


def _pods(docs: list[Obj]) -> list[Obj]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job", "DaemonSet")]


def test_all_namespaces_mode_grants_a_cluster_role_and_runs_restricted(
    cluster: Cluster, namespace: str, release: str
) -> None:
    urls = ["http://prometheus-operated.monitoring:9090", "https://thanos.example/prom"]
    images = ["registry.example/ml/", "ghcr.io/acme/trainer:"]
    values = {"replicas": 2, "drift": {"prometheusUrls": urls}, "allowedImages": images}
    docs = _install(cluster, namespace, release, values)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == sorted(
        [f"ClusterRole/{release}", f"ClusterRoleBinding/{release}", f"Deployment/{release}",
         f"Role/{release}-leader-election", f"RoleBinding/{release}-leader-election",
         f"Service/{release}-metrics", f"ServiceAccount/{release}"]
    )  # fmt: skip
    (pod,) = _pods(docs)
    assert restricted_violations(pod) == []
    assert pod["enableServiceLinks"] is False  # the release's regrow-metrics Service would set $REGROW_METRICS_PORT
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "regrow-operator:0.1.0"
    assert not any(a.startswith("--namespace") for a in container["args"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REGROW_RUNTIME_IMAGE"] == "regrow-serving:0.1.0"
    assert env["REGROW_PROMETHEUS_URLS"].split() == urls  # as the operator reads it
    assert float(env["REGROW_MIN_CHECK_SECONDS"]) == 10
    assert env["REGROW_ALLOWED_IMAGES"].split() == images


def _service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, out: Path) -> Path:
    """A kubeconfig that authenticates with the ServiceAccount's token, as the operator's pod would."""
    core = client.CoreV1Api(cluster.api_client())
    secrets = wait_for(lambda: core.read_namespaced_service_account(account, namespace).secrets, 30, "a token")
    data = core.read_namespaced_secret(str(secrets[0].name), namespace).data or {}
    token = base64.b64decode(data["token"]).decode()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": account, "user": {"token": token}}]
    admin["contexts"] = [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}]
    admin["current-context"] = account
    out.write_text(yaml.safe_dump(admin))
    return out


def _status_of(api: client.ApiClient, where: str) -> Obj | None:
    return ((Kube(api).get(where) or {}).get("status") or {}).get("conditions")


def test_the_operator_reconciles_with_only_the_role_the_chart_grants(
    cluster: Cluster,
    namespace: str,
    release: str,
    operator: Operator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    docs = _install(cluster, namespace, release, {"watchNamespaces": [namespace]})
    assert {d["kind"] for d in docs} >= {"Role", "RoleBinding"} and "ClusterRole" not in {d["kind"] for d in docs}
    (pod,) = _pods(docs)
    assert f"--namespace={namespace}" in pod["containers"][0]["args"]

    kubeconfig = _service_account_kubeconfig(cluster, namespace, release, tmp_path / "operator.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # kopf's own watches log in as the ServiceAccount too
    as_operator = Kube(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
    api = cluster.api_client()
    caplog.set_level(logging.WARNING)
    with operator(kube=as_operator):
        applied = _apply_examples(api, namespace)
        for kind, body in applied.items():
            where = path(API_VERSION, PLURALS[kind], namespace, body["metadata"]["name"])
            wait_for(partial(_status_of, api, where), 30, f"{kind} status written as the ServiceAccount")
        for child in (path("batch/v1", "jobs", namespace, "iris-v1-train"),
                      path("apps/v1", "deployments", namespace, "iris-predictor"),
                      path("v1", "services", namespace, "iris-predictor"),
                      path("coordination.k8s.io/v1", "leases", namespace, "regrow-operator")):  # fmt: skip
            wait_for(partial(Kube(api).get, child), 30, child)
    forbidden = [r.getMessage() for r in caplog.records if "403" in r.getMessage() or "orbidden" in r.getMessage()]
    assert forbidden == []
    assert not [r for r in caplog.records if r.name.startswith("regrow") and r.levelno >= logging.ERROR]


def _monitoring_crd(kind: str, plural: str) -> Obj:
    """A stand-in for the Prometheus Operator's CRD (not installed here): the kind exists, any body goes."""
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


@pytest.mark.parametrize("serving_port", [0, 9090])
def test_the_monitors_select_the_operator_service_and_the_serving_pods(
    cluster: Cluster, namespace: str, release: str, serving_port: int
) -> None:
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors")):
        # create, not apply: a cluster with the real CRDs keeps them
        cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(_monitoring_crd(kind, plural)), check=False)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.monitoring.coreos.com")
    values = {"watchNamespaces": [namespace], "metrics": {"serviceMonitor": {"enabled": True, "labels": {"team": "a"}},
                                                          "servingPodMonitor": {"enabled": True},
                                                          "servingPort": serving_port}}  # fmt: skip
    docs = {d["kind"]: d for d in _install(cluster, namespace, release, values)}
    operator_env = {e["name"]: e.get("value") for e in _pods([docs["Deployment"]])[0]["containers"][0]["env"]}
    defaults = PodDefaults(metrics_port=int(operator_env["REGROW_SERVING_METRICS_PORT"]))  # as the operator reads it
    assert defaults.metrics_port == serving_port
    service, monitor = docs["Service"], docs["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["team"] == "a"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]

    pods = docs["PodMonitor"]["spec"]
    assert pods["namespaceSelector"] == {"matchNames": [namespace]}
    md = parse_spec(ModelDeploymentSpec, _example("ModelDeployment")["spec"])
    owner = Owner("ModelDeployment", "iris", namespace, "u")
    canary = deployment(owner, md, defaults, "v2", canary_replicas=1)["spec"]["template"]
    shadow = deployment(owner, md, defaults, "v2", canary_replicas=1, shadow_percent=50)["spec"]["template"]
    template = deployment(owner, md, defaults, None)["spec"]["template"]
    for labels in (template["metadata"]["labels"], canary["metadata"]["labels"], shadow["metadata"]["labels"]):
        assert pods["selector"]["matchLabels"].items() <= labels.items()
        assert all(labels.get(e["key"]) in e["values"] for e in pods["selector"]["matchExpressions"])
    ports = [p["name"] for c in template["spec"]["containers"] for p in c["ports"]]
    (endpoint,) = [e["port"] for e in pods["podMetricsEndpoints"]]
    assert endpoint == ("metrics" if serving_port else "http") and endpoint in ports


def test_the_dashboard_and_the_alert_rules_are_rendered_as_shipped(
    cluster: Cluster, namespace: str, release: str
) -> None:
    cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(_monitoring_crd("PrometheusRule", "prometheusrules")),
                    check=False)  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com")
    shipped = yaml.safe_load((ROOT / "charts/regrow/values.yaml").read_text())["metrics"]
    assert not shipped["grafanaDashboard"]["enabled"] and not shipped["prometheusRule"]["enabled"]  # off by default
    monitoring = {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True, "labels": {"role": "x"}}}
    values = {"watchNamespaces": [namespace], "metrics": monitoring}
    docs = {d["kind"]: d for d in _install(cluster, namespace, release, values)}
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["regrow.json"]) == json.loads(
        (ROOT / "charts/regrow/files/dashboard.json").read_text()
    )
    rule = docs["PrometheusRule"]
    assert rule["metadata"]["labels"]["role"] == "x"
    assert rule["spec"] == yaml.safe_load((ROOT / "charts/regrow/files/rules.yaml").read_text())  # {{ $labels }} kept


def test_the_demo_store_takes_a_shared_claim_for_several_nodes(cluster: Cluster, namespace: str, release: str) -> None:
    """Every pod of the examples mounts the demo store: ReadWriteOnce by default (one node), ReadWriteMany on a
    StorageClass that offers it when asked."""
    shared = {"enabled": True, "accessMode": "ReadWriteMany", "storageClassName": "nfs-client"}
    with ThreadPoolExecutor(2) as pool:  # the install waits for its hook Job, whose pod the test runs to its end
        pod = pool.submit(lambda: _pod_of(cluster.api_client(), namespace, "regrow-demo-data"))
        installed = pool.submit(
            _install, cluster, namespace, release, {"watchNamespaces": [namespace], "demoStore": shared}
        )
        _finish_pod(cluster.api_client(), namespace, pod.result(60), 0, "")
        docs = installed.result(120)
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs-client"
    shipped = yaml.safe_load((ROOT / "charts/regrow/values.yaml").read_text())["demoStore"]
    assert shipped["accessMode"] == "ReadWriteOnce" and not shipped["storageClassName"]


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector selects ``labels`` (an empty selector selects everything)."""
    expressions = {
        "In": lambda e: labels.get(e["key"]) in e["values"],
        "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
        "Exists": lambda e: e["key"] in labels,
        "DoesNotExist": lambda e: e["key"] not in labels,
    }
    return (selector.get("matchLabels") or {}).items() <= labels.items() and all(
        expressions[e["operator"]](e) for e in selector.get("matchExpressions") or []
    )


@dataclasses.dataclass(frozen=True)
class Peer:
    labels: dict[str, str]
    namespace: str
    namespace_labels: dict[str, str]


def _admits(policies: list[Obj], target: Peer, port: int, source: Peer) -> bool:
    """Whether NetworkPolicies let ``source`` reach ``target`` on ``port``, as Kubernetes reads them: a pod that no
    policy selects takes anything; one that some do takes what any of their ingress rules admits (a peer with a
    podSelector alone is in the policy's namespace)."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == target.namespace
                 and _selects(p["spec"]["podSelector"], target.labels)]  # fmt: skip
    if not selecting:
        return True

    def peer(rule: Obj) -> bool:
        where = rule.get("namespaceSelector")
        in_namespace = (
            source.namespace == target.namespace if where is None else _selects(where, source.namespace_labels)
        )
        return in_namespace and _selects(rule.get("podSelector") or {}, source.labels)

    return any(
        any(p["port"] == port for p in rule.get("ports") or [{"port": port}]) and (
            "from" not in rule or any(peer(r) for r in rule["from"])
        )
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )  # fmt: skip


def test_the_network_policies_let_only_the_stable_pods_reach_a_shadow_and_only_observers_the_metrics(
    cluster: Cluster, namespace: str, release: str
) -> None:
    """The node cluster's network enforces no NetworkPolicy, so the rendered policies are read here as Kubernetes
    reads them, against the pods the operator really makes."""
    assert not yaml.safe_load((ROOT / "charts/regrow/values.yaml").read_text())["networkPolicy"]["enabled"]
    ml = f"{namespace}-ml"
    cluster.kubectl("create", "namespace", ml)
    try:
        prometheus = {"namespaceSelector": {"matchLabels": {"team": "monitoring"}},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip
        values = {"networkPolicy": {"enabled": True, "namespaces": [ml], "prometheus": prometheus}}
        docs = _install(cluster, namespace, release, values)
    finally:
        cluster.kubectl("delete", "namespace", ml, "--wait=false")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["namespace"] for p in policies} == {ml} and len(policies) == 2
    (operator,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    defaults = PodDefaults(metrics_port=int(env["REGROW_SERVING_METRICS_PORT"]))
    assert defaults.metrics_port == 9090  # /metrics is apart from the inference port by default

    md = parse_spec(ModelDeploymentSpec, _example("ModelDeployment")["spec"])
    owner = Owner("ModelDeployment", "iris", ml, "u")
    ml_labels = {"kubernetes.io/metadata.name": ml}

    def pod(manifest: Obj) -> Peer:
        return Peer(manifest["spec"]["template"]["metadata"]["labels"], ml, ml_labels)

    stable, canary = pod(deployment(owner, md, defaults, None)), pod(deployment(owner, md, defaults, "v2", 1))
    shadow = pod(deployment(owner, md, defaults, "v2", canary_replicas=1, shadow_percent=50))
    ports = {p["name"]: p["containerPort"] for p in deployment(owner, md, defaults, None)["spec"]["template"]["spec"]
             ["containers"][0]["ports"]}  # fmt: skip
    http, metrics = ports["http"], ports["metrics"]
    client_pod = Peer({"app": "client"}, ml, ml_labels)
    operator_pod = Peer(operator["spec"]["template"]["metadata"]["labels"], namespace,
                        {"kubernetes.io/metadata.name": namespace})  # fmt: skip
    scraper = Peer({"app.kubernetes.io/name": "prometheus"}, "monitoring", {"team": "monitoring"})
    elsewhere = Peer(stable.labels, "other", {"kubernetes.io/metadata.name": "other"})  # a stable pod's labels

    def reach(source: Peer, target: Peer, port: int) -> bool:
        return _admits(policies, target, port, source)

    for serving in (stable, canary):
        assert (
            reach(client_pod, serving, http)
            and reach(scraper, serving, metrics)
            and reach(operator_pod, serving, metrics)
        )
        assert not reach(client_pod, serving, metrics)
    assert reach(stable, shadow, http) and reach(operator_pod, shadow, http)  # mirrored requests; what it serves
    assert not any(reach(p, shadow, http) for p in (client_pod, canary, scraper, elsewhere))
    assert reach(scraper, shadow, metrics) and reach(operator_pod, shadow, metrics)
    assert not any(reach(p, shadow, metrics) for p in (client_pod, stable))
    trainer = Peer({"app.kubernetes.io/component": "trainer", "app.kubernetes.io/managed-by": "regrow"}, ml, ml_labels)
    assert reach(client_pod, trainer, 1234)  # the policies select only serving pods
