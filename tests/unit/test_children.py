"""When a child already holds what regrow would apply. Server-side apply itself runs against a real API server
in ``tests/integration/test_modeldeployment_controller.py``."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from regrow.controller.children import holds

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
