"""Mixed-type data through the whole loop on a cluster with a real kubelet (#16): palmerpenguins (island and
sex are categories, some values missing) trained, served, and sent per-column tensors by an unchanged
tritonclient (BYTES and FP32, binary) through the Service. In-distribution traffic leaves the DriftPolicy
quiet; then one categorical column moves alone, the other columns drawn as before (``mix``: every penguin
says Dream; ``unseen``: the champion never saw Torgersen, and every penguin says Torgersen). The policy,
under which one column of six may breach, detects it, the retrain trains on the data set plus the labelled
live traffic (logged by column), and the new version rolls out."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as oip
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB, TrainingJobSpec, parse_spec
from regrow.controller.kube import Kube, path
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.tabular import canonical
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train
from tests.conftest import Operator
from tests.e2e.test_drift_loop import _post, labeller
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, get_custom, wait_for
from tests.unit.test_api import _example, _with
from tests.unit.test_mixed import CATEGORICAL, COLUMNS

STORE = "file:///var/lib/regrow"


def _champion(node_store: Path, without: str | None) -> tuple[pd.DataFrame, str]:
    """palmerpenguins in the store, and a weak champion trained on it (with no penguin of the island
    ``without``): the retrain, a random forest, beats it on any holdout, so the gate's verdict is not left
    to how the holdouts fall (beside a champion as good as itself, one CI run's retrain never served)."""
    penguins = pd.read_csv(io.BytesIO(sample_csv("penguins")))
    data = node_store / "datasets" / "penguins.csv"
    data.parent.mkdir()
    (penguins if without is None else penguins[penguins["island"] != without]).to_csv(data, index=False)
    spec = parse_spec(TrainingJobSpec, {
        "dataset": {"uri": f"{STORE}/datasets/penguins.csv", "target": "species"},
        "model": {"algorithm": "logisticRegression", "params": {"C": "0.0001", "max_iter": 20}},
        "output": {"registry": f"{STORE}/registry", "modelName": "penguins"},
        "promote": {"alias": "champion"},
    })  # fmt: skip
    registry = Registry(open_store(f"file://{node_store}/registry"))
    v1 = train(spec, data.read_bytes(), registry, {}).version
    own_like_a_trainer_pod(node_store)
    return penguins, v1


def _tensors(rows: pd.DataFrame) -> list[oip.InferInput]:
    """One tensor per column, as tritonclient sends them (binary): BYTES categories, FP32 numbers."""
    out = []
    for name in COLUMNS:
        if name in CATEGORICAL:
            array = canonical(rows[name].to_numpy(dtype=object, na_value=None)).reshape(-1, 1)
            tensor = oip.InferInput(name, list(array.shape), "BYTES")
        else:
            array = rows[[name]].to_numpy(dtype=np.float32)
            tensor = oip.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        out.append(tensor)
    return out


def _send(client_: oip.InferenceServerClient, host: str, rows: pd.DataFrame,
          token: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """Requests of 20 rows each; what answered them; each labelled through the labeller ``token`` if given."""
    versions = []
    for start in range(0, len(rows), 20):
        chunk = rows.iloc[start : start + 20]
        result = client_.infer("penguins", _tensors(chunk)).get_response()
        versions.append(result["model_version"])
        if token is not None:
            feedback = {"id": result["parameters"]["prediction_id"], "label": chunk["species"].tolist()}
            status, answer = _post(host, "/v2/models/penguins/feedback", feedback, token)
            assert status == 202, answer
    return versions


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "penguins"},
        "spec": {
            "targetRef": {"name": "penguins"}, "tests": [{"type": "psi"}, {"type": "chiSquare"}],
            "driftShare": "0.1", "interval": "2s", "window": "10m", "minSamples": 200, "consecutiveBreaches": 2,
            "retrain": {"cooldown": "1m", "template": {"spec": {
                "dataset": {"uri": f"{STORE}/datasets/penguins.csv", "target": "species", "feedback": {}},
                "model": {"algorithm": "randomForest"},
                "output": {"registry": f"{STORE}/registry", "modelName": "penguins"},
                "promote": {"alias": "champion", "minImprovement": "0.0"},
                "storage": {"volumeClaimName": "regrow-store"},
            }}},
        },
    }  # fmt: skip


@pytest.mark.parametrize("shift", ["mix", "unseen"])
def test_a_categorical_column_that_moves_is_detected_retrained_on_and_rolled_out(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path, shift: str
) -> None:
    penguins, v1 = _champion(node_store, "Torgersen" if shift == "unseen" else None)
    objects = client.CustomObjectsApi(node_api)
    rng = np.random.default_rng(2)
    trained = penguins if shift == "mix" else penguins[penguins["island"] != "Torgersen"]
    moved = trained.iloc[rng.integers(0, len(trained), 400)].assign(island="Dream" if shift == "mix" else "Torgersen")

    def dp() -> dict[str, Any]:
        return get_custom(node_api, node_namespace, DRIFT_POLICY.plural, "penguins")

    def drift(reason: str) -> bool:
        return bool((condition(dp(), "DriftDetected") or {}).get("reason") == reason)

    def serving() -> str | None:
        md = get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "penguins")
        return ((md.get("status") or {}).get("model") or {}).get("version")

    with node_operator():
        token = labeller(node_api, node_namespace)
        md = _with(_example("ModelDeployment"), "metadata.name", "penguins")
        md = _with(md, "spec.model", {"registry": f"{STORE}/registry", "name": "penguins", "alias": "champion",
                                      "refreshInterval": "2s"})  # fmt: skip
        md = _with(md, "spec.predictionLog", {"samplePercent": 100})
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, md)
        wait_for(lambda: serving() == v1, 180, f"{v1} serving")
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, DRIFT_POLICY.plural, _policy())
        service = Kube(node_api).get(path("v1", "services", node_namespace, "penguins-predictor")) or {}
        host = str(service["spec"]["clusterIP"])
        triton = oip.InferenceServerClient(f"{host}:80")
        wait_for(lambda: condition(dp(), "Ready"), 60, "the policy's first reading")

        quiet = _send(
            triton,
            host,
            trained.iloc[rng.integers(0, len(trained), 400)],
        )
        wait_for(lambda: drift("NoDrift"), 60, "a quiet check")
        island = next(f for f in dp()["status"]["lastCheck"]["features"] if f["name"] == "island")
        assert not island["drifted"] and float(island.get("otherShare") or 0) < 0.05, island

        started = time.monotonic()
        shifted = _send(triton, host, moved, token)
        wait_for(lambda: drift("DriftDetected"), 120, "drift")
        detected = time.monotonic() - started
        features = {f["name"]: f for f in dp()["status"]["lastCheck"]["features"]}
        drifted = sorted(name for name, f in features.items() if f["drifted"])
        tj = wait_for(lambda: _finished(node_api, node_namespace, "penguins-retrain-1"), 300, "the retrain")
        assert (condition(tj, "Succeeded") or {}).get("reason") == "Promoted", tj["status"]
        v2 = str(tj["status"]["artifact"]["version"])
        wait_for(lambda: serving() == v2, 180, f"{v2} serving")
        rolled = time.monotonic() - started
    assert set(quiet) == set(shifted) == {v1}
    assert "island" in drifted and set(drifted) <= {"island", "__prediction__"}, drifted  # the island alone
    if shift == "unseen":
        # Torgersen is none of the champion's categories: the window's shifted half is other
        assert float(features["island"]["otherShare"]) > 0.4
    meta = json.loads((node_store / "registry/penguins/versions" / v2 / "metadata.json").read_text())
    assert meta["categorical"] == CATEGORICAL and meta["dataset"]["feedback"]["rows"] == 400
    print(f"\n{shift}: drifted {drifted}; island {features['island']}; first shifted request -> DriftDetected "
          f"{detected:.1f}s -> v2 serving {rolled:.1f}s; v2 trained on {len(trained)} + 400 live rows")  # fmt: skip


def _finished(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    obj = Kube(api).get(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, namespace, name)) or {}
    return obj if (condition(obj, "Succeeded") or {}).get("status") in ("True", "False") else None
