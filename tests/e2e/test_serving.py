"""A ModelDeployment on a cluster with a real kubelet: pods answer OIP v2 through the Service, and moving
the alias rolls them to the new version while a load runs, with no failed request."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.controller.kube import Kube, path
from regrow.manifests.common import NON_ROOT_UID
from regrow.storage import open_store
from regrow.storage.registry import Registry
from tests.conftest import Operator
from tests.helpers import condition, get_custom, wait_for
from tests.unit.test_api import _example as example
from tests.unit.test_api import _with
from tests.unit.test_server import ROWS, publish_iris, v2

LOAD_SECONDS_MAX = 240


def answered_by(connection: http.client.HTTPConnection, body: str) -> str:
    """One OIP request on ``connection``: the version that answered it, or what went wrong. (A response with
    "connection: close" closes the connection; the next request() reopens it.)"""
    try:
        connection.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as error:
        return f"error {type(error).__name__}"
    return str(json.loads(payload)["model_version"]) if response.status == 200 else f"HTTP {response.status}"


class Load:
    """Sequential OIP requests through the Service until stopped (or LOAD_SECONDS_MAX), counting outcomes.

    Each on a new connection, or all on one kept alive, which a client reopens only when the server
    closes it: a roll must not fail those either (draining pods close them after a response)."""

    def __init__(self, host: str, keep_alive: bool) -> None:
        self.host = host
        self.keep_alive = keep_alive
        self.outcomes: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        body = json.dumps(v2(ROWS))
        connection = None
        while not self.stop.is_set() and time.monotonic() < deadline:
            if connection is None:
                connection = http.client.HTTPConnection(self.host, 80, timeout=5)
            key = answered_by(connection, body)
            if not self.keep_alive or key.startswith("error"):
                connection.close()
                connection = None
            self.outcomes[key] += 1
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(10)


def own_like_a_trainer_pod(root: Path) -> None:
    """The host wrote the registry as root; trainer pods (uid 65532) would own it, and serving pods must
    be able to write their prediction logs into it."""
    for entry in [root, *root.rglob("*")]:
        shutil.chown(entry, NON_ROOT_UID, NON_ROOT_UID)


@pytest.mark.usefixtures("quiet_node")
def test_serves_through_the_service_and_rolls_to_a_moved_alias_without_errors(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    registry = Registry(open_store(f"file://{node_store}/registry"))
    first = publish_iris(node_store)  # publishes iris and makes it champion
    own_like_a_trainer_pod(node_store / "registry")
    body = _with(example("ModelDeployment"), "spec.model.refreshInterval", "2s")
    objects = client.CustomObjectsApi(node_api)

    def md() -> dict[str, Any]:
        return get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris")

    def serving(version: str) -> dict[str, Any] | None:
        obj = md()
        ready, progressing = condition(obj, "Ready"), condition(obj, "Progressing")
        done = progressing is not None and progressing["reason"] == "RolloutComplete"
        ok = ready is not None and ready["status"] == "True" and done
        return obj if ok and (obj.get("status") or {}).get("model", {}).get("version") == version else None

    with node_operator():
        started = time.monotonic()
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, body)
        obj = wait_for(lambda: serving(first), 180, f"the ModelDeployment to serve {first}")
        to_ready = time.monotonic() - started
        service = Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor"))
        cluster_ip = (service or {})["spec"]["clusterIP"]
        assert obj["status"]["model"]["uri"].endswith(f"/registry/iris/versions/{first}")

        with Load(str(cluster_ip), keep_alive=False) as fresh, Load(str(cluster_ip), keep_alive=True) as kept:
            wait_for(lambda: (fresh.outcomes + kept.outcomes)[first] >= 20, 60, "the first answers through the Service")
            second = publish_iris(node_store, algorithm="randomForest", alias="challenger")
            moved = time.monotonic()
            registry.set_alias("iris", "champion", second)
            wait_for(lambda: serving(second), 180, f"the roll to {second}")
            rolled = time.monotonic() - moved
            wait_for(lambda: min(fresh.outcomes[second], kept.outcomes[second]) >= 20, 60, "the new version's answers")
    failures = {k: v for k, v in (fresh.outcomes + kept.outcomes).items() if k not in (first, second)}
    print(f"\nModelDeployment apply -> Ready: {to_ready:.1f}s; alias moved -> every pod serves it: {rolled:.1f}s; "
          f"requests during the roll, a connection each: {dict(fresh.outcomes)}; "
          f"on a kept-alive connection: {dict(kept.outcomes)}")  # fmt: skip
    assert failures == {}
    assert md()["status"]["desiredVersion"] == second
    # The example logs 10% of requests: the first version's pods wrote theirs, at the latest on shutdown.
    logged = wait_for(lambda: list((node_store / "registry/iris/predictions" / first).glob("*.jsonl")), 60, "logs")
    records = [json.loads(line) for f in logged for line in f.read_text().splitlines()]
    assert records and all(r["outputs"] and len(r["inputs"]) == len(ROWS) for r in records)
