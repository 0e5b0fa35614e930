"""The serving pod's environment: what the operator's manifest sets is what ``regrow serve`` reads. (The model
metadata and the trainer's report are checked from both sides in test_server.py and test_trainingjob_reconciler.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regrow.api import ModelDeploymentSpec, parse_spec
from regrow.contracts import MIN_KEY_BYTES, ServingEnv
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.serving import DRAIN_SECONDS, LABELLERS_DIR, deployment

TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "registry": TEXT, "model_name": TEXT, "model_alias": TEXT, "model_version": TEXT,
        "await_version": st.booleans(),
        "refresh_seconds": st.floats(0.001, 1e6) | st.integers(1, 10**6), "drain_seconds": st.integers(0, 600),
        "max_connections": st.integers(1, 10**5), "max_rows": st.integers(1, 10**6),
        "metrics_port": st.integers(1, 65535),
        "prediction_log_percent": st.integers(0, 100), "shadow_url": TEXT, "shadow_percent": st.integers(0, 100),
    },
)  # fmt: skip


@given(SETTINGS)
def test_every_setting_written_as_a_variable_reads_back_the_same(settings: dict[str, Any]) -> None:
    written = ServingEnv(**settings)
    variables = written.variables()
    assert [v["name"] for v in variables] == [ServingEnv.variable(f) for f in ServingEnv.model_fields if f in settings]
    assert ServingEnv.from_environ({v["name"]: v["value"] for v in variables}) == written


def test_a_serving_pod_reads_what_its_manifest_says() -> None:
    spec = parse_spec(ModelDeploymentSpec, {
        "model": {"registry": "s3://models/r", "name": "iris", "alias": "champion", "refreshInterval": "2m"},
        "storage": {"endpointUrl": "http://minio:9000"},
        "predictionLog": {"samplePercent": 10, "maxQueue": 500, "retention": "48h", "labelHorizon": "24h"},
        "server": {"maxConnections": 64, "maxRows": 100, "shedAfterMilliseconds": 250},
        "rollout": {"strategy": "Canary", "steps": [{"mirror": 10, "minRequests": 100}, {"weight": 50, "pause": "1m"}]},
    })  # fmt: skip
    owner = Owner("ModelDeployment", "iris", "ml", "u1")
    tracks: list[dict[str, Any]] = [{}, {"canary_replicas": 1, "shadow_percent": 10}]
    for kwargs in tracks:
        manifest = deployment(owner, spec, PodDefaults(metrics_port=9090), "0123456789abcdef", **kwargs)
        env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
        plain = {e["name"]: e["value"] for e in env if "value" in e}
        # a shadow logs nothing, but holds the key for its handshake with the stable pods
        assert {e["name"] for e in env if "valueFrom" in e} == {"REGROW_THREADS", "REGROW_FEEDBACK_KEY"}
        read = ServingEnv.from_environ({**plain, "REGROW_THREADS": "2", "REGROW_FEEDBACK_KEY": "k" * MIN_KEY_BYTES})
        assert (read.registry, read.model_name, read.model_alias) == ("s3://models/r", "iris", "champion")
        assert (read.refresh_seconds, read.drain_seconds, read.metrics_port) == (120, DRAIN_SECONDS, 9090)
        assert (read.max_connections, read.max_rows, read.shed_after_ms) == (64, 100, 250)
        assert read.storage_endpoint == "http://minio:9000"
        if kwargs:  # the shadow: asks for its share, mirrors and logs nothing
            assert (read.shadow_percent, read.shadow_url, read.prediction_log_percent) == (10, None, 0)
        else:
            assert (read.prediction_log_percent, read.prediction_log_max_queue) == (10, 500)
            assert read.prediction_log_retention_seconds == 48 * 3600 and read.label_horizon_seconds == 24 * 3600
            assert read.shadow_url is not None and read.shadow_percent == 0
    unpinned = deployment(owner, spec, PodDefaults(), None)["spec"]["template"]["spec"]["containers"][0]["env"]
    read = ServingEnv.from_environ({e["name"]: e["value"] for e in unpinned if "value" in e})
    assert read.model_version is None and read.await_version  # a Canary's stable pods wait for a pinned version


@pytest.mark.parametrize("key", ["", "short-key-of-31-bytes-0123456789"[:31]])
def test_regrow_serve_refuses_an_empty_or_short_key_without_echoing_it(key: str) -> None:
    """An empty key (a Secret holding nothing) gave each process a random key of its own, so that ids verified
    on one replica only; a short one can be guessed. Either is refused, naming the variable, never the value."""
    with pytest.raises(ValueError, match=r"\$REGROW_FEEDBACK_KEY: String should have at least 32") as error:
        ServingEnv.from_environ({"REGROW_FEEDBACK_KEY": key, "REGROW_MODEL_NAME": "iris"})
    assert (key or "<none>") not in str(error.value)
    assert ServingEnv.from_environ({"REGROW_MODEL_NAME": "iris"}).feedback_key is None  # unset: a process key
    with pytest.raises(ValueError, match=r"\$REGROW_FEEDBACK_PREVIOUS_KEY: String should have at least 32"):
        ServingEnv.from_environ({"REGROW_FEEDBACK_KEY": "k" * 32, "REGROW_FEEDBACK_PREVIOUS_KEY": key})


def test_each_labellers_secret_is_mounted_for_the_pods_that_take_labels() -> None:
    """The pods read the tokens (the operator never does); a shadow's pods log nothing and mount none."""
    spec = parse_spec(ModelDeploymentSpec, {
        "model": {"registry": "s3://models/r", "name": "iris", "alias": "champion"},
        "predictionLog": {"samplePercent": 10},
        "labellers": [{"name": "crm", "secretName": "crm-labeller"}, {"name": "desk", "secretName": "desk"}],
    })  # fmt: skip
    owner = Owner("ModelDeployment", "iris", "ml", "u1")
    pod = deployment(owner, spec, PodDefaults(), "0123456789abcdef")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"labeller-crm": {"secretName": "crm-labeller", "optional": True},
                       "labeller-desk": {"secretName": "desk", "optional": True}}  # fmt: skip
    assert mounts["labeller-crm"] == {"name": "labeller-crm", "mountPath": f"{LABELLERS_DIR}/crm", "readOnly": True}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["REGROW_LABELLERS_DIR"] == LABELLERS_DIR
    shadow = deployment(owner, spec, PodDefaults(), "0123456789abcdef", canary_replicas=1, shadow_percent=10)
    assert not [v for v in shadow["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    unnamed = parse_spec(ModelDeploymentSpec, {**spec.to_wire(), "labellers": []})
    plain = deployment(owner, unnamed, PodDefaults(), "0123456789abcdef")["spec"]["template"]["spec"]
    assert "REGROW_LABELLERS_DIR" not in {e["name"] for e in plain["containers"][0]["env"]}
