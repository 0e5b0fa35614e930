"""A promotion rolls the pods once: on a real API server with the real Deployment controller, a TrainingJob moves
the alias while the serving pods (``Kubelet``) read the registry on their own clocks, 30 s apart, as real ones do.
Each move of the alias changes the pod template once, writes ``desiredVersion`` once and starts at most one
canary, however the pods' readings interleave with the operator's reconciles."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from kubernetes import client

from regrow import API_VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.controller.kube import Kube, Obj, path
from tests.conftest import Operator
from tests.helpers import History, condition, events_for, get_custom, wait_for
from tests.integration.test_canary_controller import Behaviour, Kubelet, _canary, _pinned, _promote
from tests.integration.test_modeldeployment_controller import _create
from tests.unit.test_api import _example, _with

pytestmark = pytest.mark.usefixtures("no_kubelet")
REFRESH = 30.0  # the default refreshInterval: each pod reads the alias when it starts, then every 30 s
START = 3.0  # seconds a pod takes to run and load its model (2-4 s on the node cluster)
ALIKE = {"v1": Behaviour(), "v2": Behaviour()}  # two versions that serve alike: the canary passes


def _md(api: client.ApiClient, namespace: str) -> Obj:
    return get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")


def _serving(api: client.ApiClient, namespace: str, version: str) -> Obj:
    """The ModelDeployment once its status names ``version`` as served by every ready pod of a complete roll."""

    def probe() -> Obj | None:
        md = _md(api, namespace)
        done = (condition(md, "Progressing") or {}).get("reason") == "RolloutComplete"
        return md if done and ((md.get("status") or {}).get("model") or {}).get("version") == version else None

    return wait_for(probe, 90, f"status.model {version}")


@contextmanager
def _histories(api: client.ApiClient, namespace: str) -> Iterator[dict[str, History]]:
    """What the test watches: the stable Deployment's pinned version, the canary Deployment's uid and the
    ModelDeployment's desiredVersion, every value each took."""
    kube = Kube(api)
    deployments = path("apps/v1", "deployments", namespace)
    watched = {
        "pinned": History(kube, deployments, _pinned, "app.kubernetes.io/component=predictor"),
        "canary": History(kube, deployments, lambda d: d["metadata"]["uid"], "app.kubernetes.io/component=canary"),
        "desired": History(kube, path(API_VERSION, MODEL_DEPLOYMENT.plural, namespace), _desired),
    }
    with ExitStack() as stack:
        yield {name: stack.enter_context(history) for name, history in watched.items()}


def _desired(md: Obj) -> str | None:
    return (md.get("status") or {}).get("desiredVersion")


def _reasons(api: client.ApiClient, namespace: str) -> list[str]:
    return [reason for _, reason, _ in events_for(api, namespace, "iris")]


def test_a_promotion_rolls_the_pods_once(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    """Two ready pods follow the alias, refreshing every 30 s; a TrainingJob promotes v2. Before, the operator
    took the pods that had not read the registry since for the alias moving back, and pinned v1, v2, v1 ... until
    every pod had read it: 13 to 18 pods made for a roll of 2."""
    kubelet = Kubelet(api, namespace, ALIKE, refresh=REFRESH, start=START)
    md = _with(_example("ModelDeployment"), "spec.replicas", {"min": 2, "max": 2})
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running(), _histories(api, namespace) as seen:
        _create(api, namespace, md)
        _serving(api, namespace, "v1")
        first_pods = set(kubelet.created)
        promoted = _promote(api, namespace, kubelet, "iris-v2", "v2")
        done = _serving(api, namespace, "v2")
        time.sleep(6)  # reconciles that would flap have had their turn
        after = _md(api, namespace)
    print(f"\npods made for the roll: {sorted(kubelet.created - first_pods)}; pinned: {seen['pinned'].values}; "
          f"desiredVersion: {seen['desired'].values}; status at v2 {promoted['status']['completionTime']} -> "
          f"{condition(done, 'Progressing')}")  # fmt: skip
    assert len(first_pods) == 2 and len(kubelet.created - first_pods) == 2  # a roll of two makes two pods
    assert seen["pinned"].values == [None, "v2"]  # the pods followed the alias until it moved; then v2, once
    assert seen["desired"].values in ([None, "v1", "v2"], ["v1", "v2"])  # written once per move
    assert _reasons(api, namespace).count("RollingOut") == 1
    assert after["status"]["alias"] == {"ref": "file:///var/lib/regrow/registry/iris@champion", "version": "v2",
                                        "generation": 2}  # fmt: skip
    assert after["status"]["model"]["version"] == "v2"


def test_under_a_canary_the_first_version_is_pinned_once_and_a_promotion_makes_one_canary(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """The ModelDeployment comes before its model: its pods wait for the alias, and under a Canary load only a
    version the operator pins, so that the first version is pinned without a second roll. A later promotion
    starts one canary, never torn down and made again while the stable pods read the move on their clocks."""
    kubelet = Kubelet(api, namespace, ALIKE, refresh=REFRESH, aliased=None, start=START)
    md = _with(_canary(steps=[{"weight": 50, "minRequests": 60}]), "spec.replicas", {"min": 2, "max": 2})
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running(), _histories(api, namespace) as seen:
        _create(api, namespace, md)
        waiting = set(wait_for(lambda: kubelet.created if len(kubelet.created) == 2 else None, 30, "waiting pods"))
        time.sleep(2)
        assert kubelet.served == {} and _pinned(_deployment(api, namespace)) is None  # nothing loaded, none pinned
        _promote(api, namespace, kubelet, "iris-v1", "v1")
        _serving(api, namespace, "v1")
        first_pods = set(kubelet.created)
        _promote(api, namespace, kubelet, "iris-v2", "v2")
        wait_for(lambda: (_md(api, namespace)["status"].get("rollout") or {}).get("outcome") == "Promoted", 90,
                 "the canary promoted")  # fmt: skip
        done = _serving(api, namespace, "v2")
        time.sleep(6)
    reasons = _reasons(api, namespace)
    print(f"\npods: first {sorted(first_pods)}, then {sorted(kubelet.created - first_pods)}; pinned: "
          f"{seen['pinned'].values}; canary Deployments: {seen['canary'].values}; desiredVersion: "
          f"{seen['desired'].values}; events: {reasons}")  # fmt: skip
    assert len(first_pods - waiting) == 2 and not waiting & kubelet.loaded  # the waiting pods never served: replaced
    # once by pinned ones, which serve v1
    assert seen["pinned"].values == [None, "v1", "v2"]  # each version pinned once
    assert len(seen["canary"].values) == 1  # one canary Deployment
    assert reasons.count("CanaryStarted") == 1 and "RolledBack" not in reasons
    assert seen["desired"].values in ([None, "v1", "v2"], ["v1", "v2"])
    assert done["status"]["rollout"]["candidate"] == "v2" and done["status"]["promotions"] == 1


def _deployment(api: client.ApiClient, namespace: str) -> Obj:
    found = Kube(api).get(path("apps/v1", "deployments", namespace, "iris-predictor"))
    assert found is not None
    return found
