"""End-to-end fixtures: a file:// store that pods reach through a PersistentVolumeClaim."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from regrow.controller.kube import Kube, path
from regrow.manifests.common import NON_ROOT_UID

STORE_ROOT = Path(os.environ.get("REGROW_E2E_STORE", "/var/lib/regrow-e2e"))
CLAIM = "regrow-store"
QUIET_SECONDS = 120


@pytest.fixture
def quiet_node(node_api: client.ApiClient) -> None:
    """For a test that counts every failed request: wait (QUIET_SECONDS at most) until no namespace or pod of an
    earlier test is still being deleted. Their teardown churns kube-proxy's rules on this one node, and frees pod
    IPs that a new pod may take while a stale rule still sends a Service's connections there (a roll on a node
    that was deleting a test's namespace once saw 12 refused connections and another pod's 404s)."""
    kube, deadline = Kube(node_api), time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        namespaces = [
            n for n in kube.list("/api/v1/namespaces") if (n.get("status") or {}).get("phase") == "Terminating"
        ]
        pods = [p for p in kube.list("/api/v1/pods") if p["metadata"].get("deletionTimestamp")]
        if not namespaces and not pods:
            return
        time.sleep(1)


@pytest.fixture
def node_store(node_api: client.ApiClient, node_namespace: str) -> Iterator[Path]:
    """A host directory that pods see at /var/lib/regrow through the claim ``regrow-store`` in the test's
    namespace; the test reads and writes it from the host."""
    with host_store(node_api, node_namespace) as root:
        yield root


@contextmanager
def host_store(api: client.ApiClient, namespace: str) -> Iterator[Path]:
    """A host directory behind a hostPath PersistentVolume, bound to the claim ``regrow-store`` in
    ``namespace``; both removed on exit."""
    root = STORE_ROOT / namespace
    root.mkdir(parents=True)
    shutil.chown(root, NON_ROOT_UID, NON_ROOT_UID)
    kube = Kube(api)
    pv_name = f"regrow-e2e-{namespace}"[:63]
    kube.create(
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "regrow-e2e",
                "hostPath": {"path": str(root), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": CLAIM},
            },
        },
    )
    kube.create(
        path("v1", "persistentvolumeclaims", namespace),
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "regrow-e2e",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    try:
        yield root
    finally:
        client.CoreV1Api(api).delete_persistent_volume(pv_name)
        shutil.rmtree(root, ignore_errors=True)
