"""When a child already holds what regrow would apply. Server-side apply itself runs against a real API server
in ``tests/integration/test_modeldeployment_controller.py``."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from regrow.controller.children import REPLICAS_MANAGER, ensure, holds
from regrow.controller.kube import Obj

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@given(VALUES)
def test_anything_holds_itself(value: Any) -> None:
    assert holds(value, value)


@given(st.dictionaries(st.text(max_size=3), VALUES, max_size=4), st.dictionaries(st.text(max_size=3), VALUES))
def test_fields_the_api_server_or_others_added_do_not_count(desired: dict[str, Any], added: dict[str, Any]) -> None:
    live = {**added, **desired}
    assert holds(live, desired)
    assert holds({"spec": {"template": [live]}}, {"spec": {"template": [desired]}})


def test_a_value_changed_removed_or_a_list_of_another_length_does_not_hold() -> None:
    ports = [{"name": "http", "port": 80}]
    desired: dict[str, Any] = {"spec": {"maxReplicas": 4, "ports": ports, "labels": {"a": "1"}}}
    assert holds({"spec": {"maxReplicas": 4, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                           "labels": {"a": "1", "b": "2"}, "replicas": 3}}, desired)  # fmt: skip
    assert not holds({"spec": {**desired["spec"], "maxReplicas": 9}}, desired)
    assert not holds({"spec": {k: v for k, v in desired["spec"].items() if k != "labels"}}, desired)
    assert not holds({"spec": {**desired["spec"], "ports": [*ports, {"name": "x"}]}}, desired)
    assert not holds({"spec": {**desired["spec"], "ports": {"name": "http"}}}, desired)
    assert not holds({"spec": {**desired["spec"], "maxReplicas": "4"}}, desired)


def test_zero_values_hold_where_the_api_server_left_them_out() -> None:
    assert holds({"spec": {}}, {"spec": {"envFrom": [], "selector": {}, "readOnly": False, "port": 0, "name": ""}})
    assert not holds({"spec": {"readOnly": True}}, {"spec": {"readOnly": False}})
    assert not holds({"spec": {"envFrom": [{"secretRef": {"name": "s"}}]}}, {"spec": {"envFrom": []}})


class Recorder:
    """An API server with no objects that records what is applied, and as whom."""

    def __init__(self) -> None:
        self.applied: list[tuple[Obj, str]] = []

    def get(self, path: str) -> Obj | None:
        return None

    def apply(self, path: str, body: Obj, manager: str = "regrow") -> Obj:
        self.applied.append((body, manager))
        return body

    def patch(self, path: str, body: Obj) -> Obj:
        raise AssertionError("nothing to take over")

    def create(self, path: str, body: Obj) -> Obj:
        raise AssertionError("children are applied")

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        raise AssertionError("a child is looked up by name")


@given(st.integers(0, 20))
def test_replicas_are_handed_to_a_manager_of_their_own_unless_the_api_server_would_set_them(replicas: int) -> None:
    """regrow's later applies leave replicas out. Set at creation by regrow alone, they would then be reset to the
    default; handed to ``regrow-replicas`` they stay. A default value (1) needs no owner: it is left out, and the
    Deployment is made in one request."""
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ml"},
                "spec": {"replicas": replicas}}  # fmt: skip
    recorder = Recorder()
    ensure(recorder, manifest, unmanaged=("replicas",))
    (first, by), *handed = recorder.applied
    assert by == "regrow" and first["spec"].get("replicas") == (None if replicas == 1 else replicas)
    assert [(body["spec"], manager) for body, manager in handed] == (
        [] if replicas == 1 else [({"replicas": replicas}, REPLICAS_MANAGER)]
    )
