"""The chart on a cluster with a real kubelet: `helm install` (Helm's engine, through helm-sdkpy) runs the
operator as a pod from its image, with the chart's ServiceAccount and Role, and that pod trains and serves
the examples. Argo CD's view of the result comes from the chart's health check (gitops/argocd/health.lua)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.controller.kube import Kube, Obj, path
from regrow.training.sample_data import sample_csv
from tests.cluster import Cluster
from tests.conftest import ROOT
from tests.helpers import get_custom, wait_for
from tests.unit.test_api import _example
from tests.unit.test_argocd_health import health

helm = pytest.importorskip("helm_sdkpy", reason="helm-sdkpy is installed by `make dev`")


def _healthy(api: client.ApiClient, namespace: str, plural: str, name: str) -> Obj | None:
    obj = get_custom(api, namespace, plural, name)
    verdict = health(obj)
    assert verdict["status"] != "Degraded", f"{obj['kind']} {name}: {verdict['message']}"
    return obj if verdict["status"] == "Healthy" else None


def test_helm_install_runs_the_operator_pod_that_trains_and_serves_the_examples(
    node_cluster: Cluster, node_api: client.ApiClient, node_namespace: str, node_store: Path
) -> None:
    (node_store / "datasets").mkdir()
    (node_store / "datasets" / "iris.csv").write_bytes(sample_csv("iris"))
    config = helm.Configuration(namespace=node_namespace, kubeconfig=str(node_cluster.kubeconfig))
    started = time.monotonic()
    asyncio.run(
        helm.Install(config).run(
            "regrow", str(ROOT / "charts" / "regrow"), values={"watchNamespaces": [node_namespace]}, wait=True,
            timeout=180,
        )
    )  # fmt: skip
    installed = time.monotonic() - started
    (operator_pod,) = Kube(node_api).list(path("v1", "pods", node_namespace), "app.kubernetes.io/name=regrow-operator")
    assert operator_pod["spec"]["serviceAccountName"] == "regrow"
    assert operator_pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    custom = client.CustomObjectsApi(node_api)
    for kind in (TRAINING_JOB, MODEL_DEPLOYMENT, DRIFT_POLICY):
        custom.create_namespaced_custom_object(GROUP, VERSION, node_namespace, kind.plural, _example(kind.kind))
    try:
        tj = wait_for(lambda: _healthy(node_api, node_namespace, TRAINING_JOB.plural, "iris-v1"), 300, "iris-v1")
        trained = time.monotonic() - started
        md = wait_for(lambda: _healthy(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris"), 300, "iris")
        serving = time.monotonic() - started
    except AssertionError as failure:
        name = operator_pod["metadata"]["name"]
        log = client.CoreV1Api(node_api).read_namespaced_pod_log(name, node_namespace, tail_lines=40)
        raise AssertionError(f"{failure}\noperator log:\n{log}") from None
    assert md["status"]["model"]["version"] == tj["status"]["artifact"]["version"]
    dp = wait_for(lambda: get_custom(node_api, node_namespace, DRIFT_POLICY.plural, "iris").get("status"), 60, "dp")
    assert dp["observedGeneration"] == 1
    (operator_pod,) = Kube(node_api).list(path("v1", "pods", node_namespace), "app.kubernetes.io/name=regrow-operator")
    assert operator_pod["status"]["containerStatuses"][0]["restartCount"] == 0

    lease = Kube(node_api).get(path("coordination.k8s.io/v1", "leases", node_namespace, "regrow-operator"))
    assert lease is not None and lease["spec"]["holderIdentity"].startswith(operator_pod["metadata"]["name"])
    asyncio.run(helm.Uninstall(config).run("regrow", wait=True, timeout=60))
    print(f"\nhelm install: {installed:.1f}s; TrainingJob Healthy at {trained:.1f}s; ModelDeployment at {serving:.1f}s")
