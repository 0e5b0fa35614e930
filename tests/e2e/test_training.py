"""A TrainingJob on a cluster with a real kubelet: the trainer runs in the runtime image and publishes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import TRAINING_JOB
from regrow.drift.profile import Profile
from regrow.training.sample_data import sample_csv
from tests.conftest import Operator
from tests.helpers import condition, get_custom, wait_for
from tests.unit.test_api import _example


def test_example_trainingjob_trains_publishes_and_promotes(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    (node_store / "datasets").mkdir()
    (node_store / "datasets" / "iris.csv").write_bytes(sample_csv("iris"))

    body = _example("TrainingJob")  # as shipped: file:// store on the claim regrow-store
    with node_operator():
        started = time.monotonic()
        client.CustomObjectsApi(node_api).create_namespaced_custom_object(
            GROUP, VERSION, node_namespace, TRAINING_JOB.plural, body
        )

        def done() -> dict[str, object] | None:
            obj = get_custom(node_api, node_namespace, TRAINING_JOB.plural, "iris-v1")
            cond = condition(obj, "Succeeded")
            return obj if cond and cond["status"] != "Unknown" else None

        obj = wait_for(done, 300, "the TrainingJob to finish")
        elapsed = time.monotonic() - started
    cond = condition(obj, "Succeeded")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Promoted"), cond
    status = obj["status"]
    assert isinstance(status, dict)
    version = status["artifact"]["version"]
    registry = node_store / "registry" / "iris"
    assert sorted(p.name for p in (registry / "versions" / version).iterdir()) == [
        "metadata.json",
        "model.onnx",
        "profile.json",
    ]
    assert json.loads((registry / "aliases" / "champion.json").read_text())["version"] == version
    meta = json.loads((registry / "versions" / version / "metadata.json").read_text())
    assert meta["trainingJob"] == {"namespace": node_namespace, "name": "iris-v1", "uid": obj["metadata"]["uid"]}  # type: ignore[index]
    assert float(status["artifact"]["metrics"]["accuracy"]) >= 0.85
    profile = Profile.from_json((registry / "versions" / version / "profile.json").read_bytes())
    assert profile.names == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    print(f"\nTrainingJob apply -> Succeeded: {elapsed:.1f}s; parity error {meta['parityError']:.2e}")
