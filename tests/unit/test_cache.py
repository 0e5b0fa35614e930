"""The watch-fed caches' pure parts: which path names what, which selector selects what, what a store keeps,
whose a changed object is, and when the cached Api asks the API server instead. The informers themselves run
against a real API server in ``tests/integration/test_operator_cache.py``."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regrow.controller.cache import Cached, Resource, Store, owners, parse, selects
from regrow.controller.kube import Obj

KINDS = {"ModelDeployment": "modeldeployments", "TrainingJob": "trainingjobs", "DriftPolicy": "driftpolicies"}
DEPLOYMENTS = Resource("apps/v1", "deployments")
PODS = Resource("v1", "pods")
TRAINING_JOBS = Resource("regrow.dev/v1alpha1", "trainingjobs")


def _obj(name: str, rv: str = "5", namespace: str = "ml", labels: dict[str, str] | None = None, **extra: object) -> Obj:
    meta = {"name": name, "namespace": namespace, "resourceVersion": rv, "labels": labels or {}}
    return {"metadata": {**meta, **extra}, "spec": {"n": rv}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/apis/apps/v1/namespaces/ml/deployments/iris", (DEPLOYMENTS, "ml", "iris")),
        ("/apis/apps/v1/namespaces/ml/deployments", (DEPLOYMENTS, "ml", None)),
        ("/api/v1/namespaces/ml/pods", (PODS, "ml", None)),
        ("/apis/regrow.dev/v1alpha1/namespaces/ml/trainingjobs/t", (TRAINING_JOBS, "ml", "t")),
        ("/apis/regrow.dev/v1alpha1/namespaces/ml/modeldeployments/iris/status", None),  # a subresource
        ("/apis/apps/v1/deployments", None),  # not namespaced
        ("/version", None),
        ("/api/v1/namespaces/ml/events/", None),
    ],
)  # fmt: skip
def test_paths_name_a_resource_namespace_and_name(path: str, expected: object) -> None:
    assert parse(path) == expected


def test_equality_selectors_select_and_others_are_not_understood() -> None:
    labels = {"a": "1", "b": "2"}
    assert selects("", labels) is True
    assert selects("a=1", labels) is True
    assert selects("a=1,b=2", labels) is True
    assert selects("a=1,b=3", labels) is False
    assert selects("c=1", labels) is False
    for other in ("a!=1", "a==1", "a in (1)", "a", "!a"):
        assert selects(other, labels) is None, other


def test_a_store_keeps_the_newest_and_reports_only_changes() -> None:
    store = Store()
    assert store.put(_obj("d", "5", managedFields=[{"manager": "x"}]))
    held = store.get("ml", "d")
    assert held is not None and "managedFields" not in held["metadata"]
    assert not store.put(_obj("d", "5"))  # the same again: no change
    assert not store.put(_obj("d", "5", managedFields=[{"manager": "y"}]))  # the watch's copy of a write: the same
    assert not store.put(_obj("d", "4"))  # older: kept out
    assert store.put(_obj("d", "12"))  # newer (compared as numbers, not text)
    assert store.get("ml", "d")["metadata"]["resourceVersion"] == "12"  # type: ignore[index]
    held = store.get("ml", "d")
    assert held is not None
    held["spec"]["n"] = "mutated"
    assert store.get("ml", "d")["spec"]["n"] == "12"  # type: ignore[index]  # callers get copies
    assert store.remove(_obj("d")) and not store.remove(_obj("d"))
    assert store.get("ml", "d") is None


def test_a_relist_replaces_one_namespace_and_names_what_changed_or_went() -> None:
    store = Store()
    for obj in (_obj("a"), _obj("b"), _obj("c", namespace="other")):
        store.put(obj)
    changed = store.replace([_obj("a"), _obj("new")], "ml")
    assert sorted(o["metadata"]["name"] for o in changed) == ["b", "new"]  # b went, new came, a is unchanged
    assert store.get("ml", "b") is None and store.get("other", "c") is not None
    changed = store.replace([], None)
    assert sorted(o["metadata"]["name"] for o in changed) == ["a", "c", "new"]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 50)), max_size=30))
def test_a_store_holds_each_objects_highest_version_whatever_the_order(puts: list[tuple[str, int]]) -> None:
    store = Store()
    for name, version in puts:
        store.put(_obj(name, str(version)))
    for name in "abc":
        versions = [v for n, v in puts if n == name]
        held = store.get("ml", name)
        assert (held["metadata"]["resourceVersion"] if held else None) == (str(max(versions)) if versions else None)


def test_a_changed_object_wakes_its_controller_and_the_objects_its_labels_name() -> None:
    ref = {"apiVersion": "regrow.dev/v1alpha1", "kind": "ModelDeployment", "name": "iris", "controller": True}
    job = _obj("iris-alias-1", ownerReferences=[ref])
    assert owners(job, KINDS) == {("modeldeployments", "ml", "iris")}
    pod = _obj("iris-predictor-x", labels={"regrow.dev/modeldeployment": "iris"}, ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "iris-predictor-1", "controller": True}])  # fmt: skip
    assert owners(pod, KINDS) == {("modeldeployments", "ml", "iris")}
    shadow = _obj("iris-shadow-x", labels={"regrow.dev/shadow-of": "iris"})
    assert owners(shadow, KINDS) == {("modeldeployments", "ml", "iris")}
    trainer = _obj("t-1-x", labels={"regrow.dev/trainingjob": "t-1", "job-name": "t-1"})
    assert owners(trainer, KINDS) == {("trainingjobs", "ml", "t-1")}
    foreign = _obj("x", ownerReferences=[{**ref, "apiVersion": "example.com/v1"}, {**ref, "controller": False}])
    assert owners(foreign, KINDS) == set()


class Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def get(self, path: str) -> Obj | None:
        self.calls.append(("get", path))
        return _obj("live", "99")

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        self.calls.append(("list", path))
        return [_obj("live", "99")]

    def create(self, path: str, body: Obj) -> Obj:
        self.calls.append(("create", path))
        return {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": "100"}}

    def patch(self, path: str, body: Obj) -> Obj:
        self.calls.append(("patch", path))
        return _obj(path.removesuffix("/status").rsplit("/", 1)[-1], "101")

    def apply(self, path: str, body: Obj, manager: str = "regrow") -> Obj:
        self.calls.append(("apply", path))
        return _obj(path.rsplit("/", 1)[-1], "102")


def test_the_cached_api_asks_the_api_server_until_its_store_has_listed() -> None:
    api, store = Api(), Store()
    cached = Cached(api, {DEPLOYMENTS: store})
    where = "/apis/apps/v1/namespaces/ml/deployments"
    assert cached.get(f"{where}/d") is not None and cached.list(where) != []
    assert api.calls == [("get", f"{where}/d"), ("list", where)]
    store.replace([_obj("d", labels={"app": "x"})], None)
    store.synced.set()
    api.calls.clear()
    assert cached.get(f"{where}/d")["metadata"]["resourceVersion"] == "5"  # type: ignore[index]
    assert cached.get(f"{where}/gone") is None  # a listed store's miss is an absence
    assert [o["metadata"]["name"] for o in cached.list(where, "app=x")] == ["d"]
    assert cached.list(where, "app=y") == []
    assert api.calls == []
    cached.list(where, "app!=x")  # a selector the cache does not understand
    cached.get("/api/v1/namespaces/ml/secrets/s")  # a resource it does not hold
    assert api.calls == [("list", where), ("get", "/api/v1/namespaces/ml/secrets/s")]


def test_the_cached_api_keeps_its_own_writes_and_an_incomplete_store_asks_on_a_miss() -> None:
    api, deployments = Api(), Store()
    models = Store(complete=False)
    deployments.synced.set()
    models.synced.set()
    cached = Cached(api, {DEPLOYMENTS: deployments, Resource("regrow.dev/v1alpha1", "modeldeployments"): models})
    where = "/apis/apps/v1/namespaces/ml/deployments"
    cached.create(where, _obj("new"))
    assert cached.get(f"{where}/new")["metadata"]["resourceVersion"] == "100"  # type: ignore[index]
    cached.patch(f"{where}/new", {"spec": {}})
    assert cached.get(f"{where}/new")["metadata"]["resourceVersion"] == "101"  # type: ignore[index]
    cached.apply(f"{where}/new", {"spec": {}})
    assert cached.get(f"{where}/new")["metadata"]["resourceVersion"] == "102"  # type: ignore[index]
    md = "/apis/regrow.dev/v1alpha1/namespaces/ml/modeldeployments"
    cached.patch(f"{md}/iris/status", {"status": {}})  # a status write's answer is the object: kept
    api.calls.clear()
    assert cached.get(f"{md}/iris")["metadata"]["resourceVersion"] == "101"  # type: ignore[index]
    assert cached.get(f"{md}/other") is not None  # not held: asked, since kopf's store may lag
    assert api.calls == [("get", f"{md}/other")]
