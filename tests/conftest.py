"""Fixtures shared by the whole suite: real Kubernetes APIs, a namespace per test, the CRDs, the operator,
and a real S3 endpoint.

Two clusters may be in play (see tests/cluster.py): ``cluster``, an API server for the integration tests,
and ``node_cluster``, one whose kubelet runs pods, for the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from regrow import __version__
from regrow.api import KINDS
from regrow.controller.result import StatusMismatch
from regrow.manifests.common import PodDefaults
from tests.cluster import Cluster, control_plane, free_port, from_kubeconfig
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_CLUSTER = os.environ.get("REGROW_REQUIRE_CLUSTER") == "1"
TEST_IMAGE = PodDefaults().runtime
OPERATOR_IMAGE = f"regrow-operator:{__version__}"
_USED: dict[str, str] = {}

Operator = Callable[..., AbstractContextManager[None]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which Kubernetes the cluster tests ran against, so a log shows they were not skipped."""
    for role in ("API tests", "end-to-end tests"):
        terminalreporter.write_line(f"Kubernetes for {role}: {_USED.get(role, 'none used')}")


def _missing(reason: str) -> None:
    if REQUIRE_CLUSTER:
        pytest.fail(f"REGROW_REQUIRE_CLUSTER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _session_cluster(role: str, found: Cluster | str) -> Iterator[Cluster]:
    if isinstance(found, str):
        _missing(found)
        raise AssertionError("unreachable")
    _USED[role] = found.describe()
    try:
        yield found
    finally:
        found.stop()


def _install_crds(cluster: Cluster) -> None:
    """The CRDs from crds/, applied and Established, and in the OpenAPI document kubectl validates with."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    deadline = time.monotonic() + 60
    wanted = [f"dev.regrow.v1alpha1.{kind.kind}" for kind in KINDS]
    while not all(w in cluster.kubectl("get", "--raw", "/openapi/v2").stdout for w in wanted):
        if time.monotonic() > deadline:
            pytest.fail("the CRDs' schemas never appeared in /openapi/v2")
        time.sleep(0.5)


def _namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


class Misfits(logging.Handler):
    """Every status the operator computes is checked against its kind's Status model before it is written
    (``checked``); this keeps the failures of that check, which fail the test that ran the operator."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], StatusMismatch):
            self.seen.append(str(record.exc_info[1]))


def _operator(cluster: Cluster, api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Operator:
    """The real operator (kopf, in a thread) watching one namespace: ``with operator(): ...``."""
    import kopf  # noqa: PLC0415

    import regrow.controller.handlers  # noqa: F401, PLC0415 - registers the handlers
    from regrow.controller.kube import Kube  # noqa: PLC0415

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("REGROW_MIN_CHECK_SECONDS", "1")  # the tests check every second

    @contextmanager
    def running(**memo_extra: Any) -> Iterator[None]:
        stop, ready = threading.Event(), threading.Event()
        given = {"kube": Kube(api), "pod_defaults": PodDefaults(), "lease_namespace": namespace}
        memo = kopf.Memo(**{**given, "watch_namespaces": [namespace], **memo_extra})
        thread = threading.Thread(
            target=lambda: asyncio.run(
                kopf.operator(namespaces=[namespace], standalone=True, stop_flag=stop, ready_flag=ready, memo=memo)
            ),
            daemon=True,
        )
        misfits = Misfits()
        logging.getLogger("regrow.controller.loop").addHandler(misfits)
        thread.start()
        try:
            assert ready.wait(30), "the operator did not start in 30s"
            yield
        finally:
            stop.set()
            thread.join(30)
            logging.getLogger("regrow.controller.loop").removeHandler(misfits)
        assert not misfits.seen, f"a reconciler's status does not fit its kind's model: {misfits.seen[0]}"

    return running


# The API server for integration tests (envtest when KUBEBUILDER_ASSETS is set).


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    yield from _session_cluster("API tests", control_plane())


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    _install_crds(cluster)


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    yield from _namespace(api, request)


@pytest.fixture
def operator(
    cluster: Cluster, api: client.ApiClient, namespace: str, crds: None, monkeypatch: pytest.MonkeyPatch
) -> Operator:
    return _operator(cluster, api, namespace, monkeypatch)


@pytest.fixture
def no_kubelet(cluster: Cluster) -> None:
    """For tests that play the kubelet's part: a real kubelet would fight them over pod status."""
    if cluster.runs_pods:
        pytest.skip("this API server's kubelet runs pods; set KUBEBUILDER_ASSETS for a kubelet-free one")


# The cluster whose kubelet runs real containers, for end-to-end tests.


def _node_cluster() -> Cluster | str:
    found = from_kubeconfig()
    if isinstance(found, str):
        return f"the end-to-end tests need a cluster that runs pods ({found}; see `make cluster-up`)"
    if not found.runs_pods:
        return f"{found.origin} has no Ready node to run pods"
    docker = shutil.which("docker")
    for image in (TEST_IMAGE, OPERATOR_IMAGE):
        inspect = (
            subprocess.run([docker, "image", "inspect", image], capture_output=True, check=False) if docker else None
        )
        if inspect is None or inspect.returncode != 0:
            return f"image {image} is not built on this node: run `make image`"
    return found


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[Cluster]:
    yield from _session_cluster("end-to-end tests", _node_cluster())


@pytest.fixture(scope="session")
def node_api(node_cluster: Cluster) -> client.ApiClient:
    return node_cluster.api_client()


@pytest.fixture
def node_namespace(node_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _namespace(node_api, request)


@pytest.fixture
def node_operator(
    node_cluster: Cluster, node_api: client.ApiClient, node_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Operator:
    _install_crds(node_cluster)
    return _operator(node_cluster, node_api, node_namespace, monkeypatch)


# A real S3 endpoint on loopback.


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto in server mode on a free loopback port, with test credentials in the environment."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only S3 tests pay for moto

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


# A real Prometheus, for the DriftPolicy's Prometheus source.


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start(targets, labels, scrape_configs=None)``: a real Prometheus (Debian's package) on a free loopback
    port, scraping ``targets`` every second with ``labels`` on every series (as the Prometheus Operator puts
    ``namespace``), or as ``scrape_configs`` say; returns its URL. Stopped after the test."""
    binary = shutil.which("prometheus")
    if binary is None:
        _missing("the Prometheus source tests need Debian's prometheus package (apt-get install prometheus)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str], labels: dict[str, str], scrape_configs: list[dict[str, Any]] | None = None) -> str:
        static = [{"job_name": "regrow", "static_configs": [{"targets": targets, "labels": labels}]}]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs or static,
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen(
            [str(binary), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 30, "Prometheus ready")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
