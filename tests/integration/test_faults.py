"""The operator through faults of the real control plane: a control plane of this test's own (envtest),
so that stopping its API server disturbs no other test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from regrow.api import TRAINING_JOB
from tests.cluster import Cluster, start_control_plane
from tests.conftest import REQUIRE_CLUSTER, _install_crds, _operator
from tests.helpers import wait_for
from tests.integration.test_trainingjob_controller import _create, _jobs
from tests.unit.test_api import _example, _with


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        if REQUIRE_CLUSTER:
            pytest.fail("KUBEBUILDER_ASSETS is needed: the fault tests restart an envtest API server")
        pytest.skip("no KUBEBUILDER_ASSETS: the fault tests restart an envtest API server of their own")
    cluster = start_control_plane(Path(assets))
    try:
        _install_crds(cluster)
        yield cluster
    finally:
        cluster.stop()


def test_the_operator_recovers_from_an_api_server_restart_without_duplicates(
    own_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server stops for 5 s while the operator watches a running TrainingJob (polled every few
    seconds) and starts again on its port: the operator carries on by itself (its watches reconnect, its
    calls back off and retry), the Job it made is not made twice, and an object created afterwards is
    reconciled."""
    api = own_cluster.api_client()
    namespace = "faults"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator = _operator(own_cluster, api, namespace, monkeypatch)
    first = _example(TRAINING_JOB.kind)
    second = _with(first, "metadata.name", "iris-v2")
    with operator():
        _create(api, namespace, first)
        wait_for(lambda: _jobs(api, namespace, "iris-v1"), 60, "the first TrainingJob's Job")
        started = time.monotonic()
        own_cluster.restart_apiserver(down_seconds=5)
        restarted = time.monotonic() - started
        _create(api, namespace, second)
        wait_for(lambda: _jobs(api, namespace, "iris-v2"), 90, "the Job of a TrainingJob created after the restart")
        recovered = time.monotonic() - started
        time.sleep(5)  # a few more polls of the first, which must not make its Job again
        jobs = {name: len(_jobs(api, namespace, name)) for name in ("iris-v1", "iris-v2")}
    assert jobs == {"iris-v1": 1, "iris-v2": 1}
    print(f"\nAPI server down and back in {restarted:.1f}s; the next object reconciled {recovered:.1f}s after the stop")
