"""Fixtures shared by the whole suite: a real Kubernetes API, a namespace per test, the CRDs."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from kubernetes import client, config

from regrow.api import KINDS
from tests.cluster import Cluster, connect

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_CLUSTER = os.environ.get("REGROW_REQUIRE_CLUSTER") == "1"
TEST_IMAGE = "regrow-serving:test"
_ORIGIN: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which Kubernetes the cluster tests ran against, so a log shows they were not skipped."""
    terminalreporter.write_line(f"Kubernetes API: {_ORIGIN[0] if _ORIGIN else 'none used'}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    found = connect()
    if isinstance(found, str):
        if REQUIRE_CLUSTER:
            pytest.fail(f"REGROW_REQUIRE_CLUSTER=1 but {found}", pytrace=False)
        pytest.skip(found)
    _ORIGIN.append(found.origin + (f", started in {found.started_in:.1f}s" if found.started_in else ""))
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig)
    )
    return api_client


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    """The CRDs from crds/, applied and Established."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    # kubectl validates against the published OpenAPI document, which trails Established by a moment.
    deadline = time.monotonic() + 60
    wanted = [f"dev.regrow.v1alpha1.{kind.kind}" for kind in KINDS]
    while not all(w in cluster.kubectl("get", "--raw", "/openapi/v2").stdout for w in wanted):
        if time.monotonic() > deadline:
            pytest.fail("the CRDs' schemas never appeared in /openapi/v2")
        time.sleep(0.5)


@pytest.fixture
def namespace(cluster: Cluster, api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on loopback (moto in server mode), with test credentials in the environment."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only S3 tests pay for moto

    from tests.cluster import free_port  # noqa: PLC0415

    os.environ.update(
        AWS_ACCESS_KEY_ID="regrow-test", AWS_SECRET_ACCESS_KEY="regrow-test", AWS_DEFAULT_REGION="us-east-1"
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the S3 endpoint."""
    import boto3  # noqa: PLC0415

    name = f"regrow-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def operator(
    cluster: Cluster, api: client.ApiClient, namespace: str, crds: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], AbstractContextManager[None]]]:
    """Start the real operator (kopf, in a thread) watching the test's namespace: ``with operator(): ...``."""
    import kopf  # noqa: PLC0415

    import regrow.controller.handlers  # noqa: F401, PLC0415 - registers the handlers
    from regrow.controller.kube import Kube  # noqa: PLC0415
    from regrow.manifests.common import Images  # noqa: PLC0415

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    @contextmanager
    def running() -> Iterator[None]:
        stop, ready = threading.Event(), threading.Event()
        memo = kopf.Memo(kube=Kube(api), images=Images(runtime=TEST_IMAGE, pull_policy="IfNotPresent"))
        thread = threading.Thread(
            target=lambda: asyncio.run(
                kopf.operator(namespaces=[namespace], standalone=True, stop_flag=stop, ready_flag=ready, memo=memo)
            ),
            daemon=True,
        )
        thread.start()
        try:
            assert ready.wait(30), "the operator did not start in 30s"
            yield
        finally:
            stop.set()
            thread.join(30)

    yield running
