"""The ModelDeployment logic that needs no cluster: which version to pin, and what the pods' state means."""

from __future__ import annotations

import urllib.parse
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from regrow.api import ModelDeploymentSpec, parse_spec
from regrow.contracts import AliasReading, ModelMetadata, ModelParameters
from regrow.controller.kube import Obj
from regrow.controller.modeldeployment import (
    POLL_SECONDS,
    PodReport,
    Probes,
    _recorded,
    answer_lifetime,
    assess,
    discover,
    follows,
    next_check_in,
    report,
    shutting_down,
)
from regrow.manifests.common import Manifest, Owner, PodDefaults
from regrow.manifests.serving import (
    autoscaler,
    deployment,
    disruption_budget,
    metrics_address,
    service,
    shadow_service,
    shadow_url,
)
from tests.unit.test_api import _example, _with
from tests.unit.test_trainingjob_reconciler import restricted_violations

OWNER = Owner("ModelDeployment", "iris", "ml", "uid-9")


def _spec(**changes: Any) -> ModelDeploymentSpec:
    body = _example("ModelDeployment")
    for key, value in changes.items():
        body = _with(body, key.replace("__", "."), value)
    return parse_spec(ModelDeploymentSpec, body["spec"])


def _report(serving: str | None, alias_version: str | None, ready: bool = True, error: str | None = None) -> PodReport:
    reading = AliasReading(version=alias_version, generation=1) if alias_version else None
    return PodReport("p", ready, serving, f"file:///r/iris/versions/{serving}", reading, error, None)


def _deployment(replicas: int = 2, ready: int = 2, updated: int = 2, **extra: Any) -> Obj:
    status = {"observedGeneration": 3, "replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
              "availableReplicas": ready, **extra}  # fmt: skip
    return {"metadata": {"generation": 3}, "spec": {"replicas": replicas}, "status": status}


def _states(conds: list[Any]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conds}


def test_assess_a_healthy_rolled_out_deployment() -> None:
    got = _states(assess(_deployment(), [_report("v1", "v1")] * 2, "v1"))
    assert got == {
        "Ready": ("True", "Serving"),
        "ModelResolved": ("True", "Resolved"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("False", "RolloutComplete"),
    }


def test_assess_a_roll_in_progress_keeps_serving() -> None:
    got = _states(assess(_deployment(replicas=2, ready=2, updated=1), [_report("v1", "v2")], "v2"))
    assert got["Ready"] == ("True", "Serving") and got["Progressing"] == ("True", "RollingOut")


def test_assess_a_model_that_fails_to_load() -> None:
    failing = _report(None, None, ready=False, error="version v1 of model iris: model, profile and metadata disagree")
    conds = assess(_deployment(ready=0), [failing], None)
    assert _states(conds)["Ready"] == ("False", "ModelUnavailable")
    assert conds[0].message == failing.error


def test_assess_a_model_not_published_yet_is_waiting_not_failed() -> None:
    """A ModelDeployment applied with the TrainingJob that will publish its model is progressing."""
    waiting = replace(
        _report(None, None, ready=False, error="alias champion of model iris does not exist"), waiting=True
    )
    got = _states(assess(_deployment(ready=0), [waiting], None))
    assert got["Ready"] == ("Unknown", "WaitingForModel") and got["ModelResolved"] == ("Unknown", "WaitingForModel")


def test_old_pods_still_shutting_down_are_said_apart_from_a_complete_roll() -> None:
    conds = assess(_deployment(), [_report("v2", "v2")] * 2, "v2", draining=1)
    assert _states(conds)["Progressing"] == ("False", "RolloutComplete")
    assert conds[3].message == "every replica serves v2; 1 old pod(s) shutting down"


def test_assess_a_deadline_passed() -> None:
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    got = _states(assess(_deployment(ready=0, updated=1, conditions=[deadline]), [], None))
    assert got["Ready"] == ("False", "ProgressDeadlineExceeded")


def _pod(name: str, rv: str = "1", phase: str = "Running", spec: ModelDeploymentSpec | None = None) -> Obj:
    """A stable pod of the example ModelDeployment (of ``spec``'s, given one), as its Deployment makes it."""
    template = deployment(OWNER, spec or _spec(), PodDefaults(), None)["spec"]["template"]
    ready = [{"type": "Ready", "status": "True"}]
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": rv}, "spec": template["spec"],
            "status": {"phase": phase, "podIP": f"ip-{name}", "conditions": ready}}  # fmt: skip


def test_report_reads_the_pod_and_asks_only_running_pods() -> None:
    asked: list[str] = []
    spec = _spec()

    def ask(pod: Obj) -> tuple[ModelMetadata | None, float]:
        asked.append(pod["status"]["podIP"])
        params = ModelParameters(uri="u", alias_version="v2", alias_generation=4, alias_age_seconds=2.5)
        return ModelMetadata(name="iris", versions=["v1"], parameters=params), 100.0

    read = AliasReading(version="v2", generation=4)
    assert report(_pod("a"), spec.model, ask) == PodReport("a", True, "v1", "u", read, None, None, read_at=97.5)
    assert report(_pod("b", phase="Pending"), spec.model, ask).serving is None
    assert asked == ["ip-a"]
    # A pod made for another alias, registry or model name (a roll replaces it) reports another alias's reading.
    for change in ({"spec__model__alias": "staging"}, {"spec__model__registry": "s3://other/registry"}):
        other = report(_pod("c", spec=_spec(**change)), spec.model, ask)
        assert other.reading is None and not other.follows
        assert report(_pod("c", spec=_spec(**change)), _spec(**change).model, ask).reading
    # A pod too old to say how old its reading is: as old as the refresh interval (30 s) allows.
    quiet = ModelMetadata(name="iris", versions=["v1"], parameters=ModelParameters(alias_version="v2"))
    assert report(_pod("d"), spec.model, lambda _: (quiet, 100.0)).read_at == 70.0


def test_a_pod_is_asked_again_only_when_it_changed_its_answer_aged_or_said_no_model() -> None:
    answers = {"ip-a": ModelMetadata(name="iris", versions=["v1"], parameters=ModelParameters(alias_version="v1"))}
    asked: list[str] = []

    def prober(ip: str, model: str) -> ModelMetadata | None:
        asked.append(ip)
        return answers.get(ip)

    clock = [0.0]
    probes = Probes(prober, clock=lambda: clock[0])
    owner = Owner("ModelDeployment", "iris", "ml", "u1")

    def look(*pods: Obj, max_age: float = 30.0) -> list[PodReport]:
        return probes.reports(owner, "predictor", list(pods), _spec().model, max_age)

    assert look(_pod("a"), _pod("b"))[0].serving == "v1" and asked == ["ip-a", "ip-b"]
    asked.clear()
    clock[0] = 29.0
    reports = look(_pod("a"), _pod("b"))
    assert reports[0].reading == AliasReading(version="v1", generation=0)  # of a record that keeps no generation
    assert asked == ["ip-b"]  # a kept its answer; b gave none: asked again
    asked.clear()
    look(_pod("a", rv="2"), _pod("b"))
    assert asked == ["ip-a", "ip-b"]  # a changed
    asked.clear()
    clock[0] = 60.0
    look(_pod("a", rv="2"))
    assert asked == ["ip-a"]  # its answer aged past the alias refresh
    asked.clear()
    look(_pod("a", rv="2"), max_age=0.0)
    assert asked == ["ip-a"]  # a canary runs: every look asks
    answers["ip-a"] = ModelMetadata(name="iris", versions=["v1"], parameters=ModelParameters(error="unreachable"))
    look(_pod("a", rv="2"), max_age=0.0)
    asked.clear()
    look(_pod("a", rv="2"))
    assert asked == ["ip-a"]  # an answer with an error is not kept
    probes.forget("u1")
    assert probes.held == {}


def test_a_pinned_pod_is_asked_again_only_when_it_changes_one_following_an_alias_once_per_refresh() -> None:
    body = _example("ModelDeployment")
    follows = parse_spec(ModelDeploymentSpec, _with(body, "spec.model.refreshInterval", "45s")["spec"])
    pinned = parse_spec(
        ModelDeploymentSpec, _with(_with(body, "spec.model.alias", None), "spec.model.version", "v3")["spec"]
    )
    assert answer_lifetime(body, follows) == 45.0
    assert answer_lifetime(body, pinned) == float("inf")
    canary = {**body, "status": {"rollout": {"candidate": "v4", "stable": "v3", "step": 1}}}
    assert answer_lifetime(canary, follows) == answer_lifetime(canary, pinned) == 0.0
    ended = {**body, "status": {"rollout": {"candidate": "v4", "stable": "v3", "step": 2, "outcome": "Promoted"}}}
    assert answer_lifetime(ended, pinned) == float("inf")


def test_a_model_deployment_at_rest_is_looked_at_once_per_alias_refresh_or_resync() -> None:
    resolved = {"type": "ModelResolved", "status": "True"}
    alias = {"model": {"alias": "champion", "refreshInterval": "45s"}}
    settled = {"readyReplicas": 2, "conditions": [resolved]}
    assert next_check_in({"spec": alias, "status": settled}, 300.0) == 45.0  # only its pods can say the alias moved
    assert next_check_in({"spec": {"model": {"alias": "champion"}}, "status": settled}, 300.0) == 30.0  # the default
    assert next_check_in({"spec": alias, "status": settled}, 20.0) == 20.0
    often = {"model": {"alias": "champion", "refreshInterval": "1s"}}
    assert next_check_in({"spec": often, "status": settled}, 300.0) == POLL_SECONDS
    pinned = {"model": {"alias": "champion", "version": "v1"}}
    assert next_check_in({"spec": pinned, "status": settled}, 300.0) == 300.0  # a pinned version does not move
    assert next_check_in({"spec": alias}, 300.0) == 300.0  # waiting for its pods: a watch sees them come
    assert next_check_in({"spec": alias, "status": {"readyReplicas": 0, "conditions": []}}, 300.0) == 300.0
    bad = {"model": {"alias": "champion", "refreshInterval": "soon"}}
    assert next_check_in({"spec": bad, "status": settled}, 300.0) == 300.0
    unresolved = {"readyReplicas": 1, "conditions": [{**resolved, "status": "Unknown"}]}
    assert next_check_in({"spec": alias, "status": unresolved}, 300.0) == POLL_SECONDS  # pods yet to say
    waiting = {"readyReplicas": 0, "conditions": [{**resolved, "status": "Unknown", "reason": "WaitingForModel"}]}
    assert next_check_in({"spec": alias, "status": waiting}, 300.0) == POLL_SECONDS  # they read, and no pod changes
    running = {**settled, "rollout": {"step": 1}}
    assert next_check_in({"spec": alias, "status": running}, 300.0) == POLL_SECONDS  # a canary step is measured
    ended = {**settled, "rollout": {"step": 1, "outcome": "Promoted"}}
    assert next_check_in({"spec": pinned, "status": ended}, 300.0) == 300.0


def test_discovery_picks_the_newest_served_versions() -> None:
    class Discovery:
        def get(self, path: str) -> Obj | None:
            return {
                "/apis/autoscaling": {
                    "versions": [{"groupVersion": "autoscaling/v1"}, {"groupVersion": "autoscaling/v2beta2"}]
                },
                "/apis/policy": {"versions": [{"groupVersion": "policy/v1"}, {"groupVersion": "policy/v1beta1"}]},
            }.get(path)

    versions = discover(Discovery())  # type: ignore[arg-type]
    assert (versions.hpa, versions.pdb) == ("autoscaling/v2beta2", "policy/v1")


def test_builders() -> None:
    spec = _spec()
    manifest = deployment(OWNER, spec, PodDefaults(), "v3")
    assert restricted_violations(manifest["spec"]["template"]["spec"]) == []
    assert manifest["spec"]["template"]["spec"]["enableServiceLinks"] is False  # no $REGROW_PORT from a Service
    assert manifest["spec"]["template"]["metadata"]["annotations"]["regrow.dev/model-version"] == "v3"
    assert manifest["spec"]["selector"]["matchLabels"] == {
        "regrow.dev/modeldeployment": "iris",
        "app.kubernetes.io/component": "predictor",
    }
    assert deployment(OWNER, spec, PodDefaults(), "v3") == manifest
    assert deployment(OWNER, spec, PodDefaults(), "v4") != manifest  # a new version changes the template: a roll
    assert autoscaler(OWNER, spec, "autoscaling/v2")["apiVersion"] == "autoscaling/v2"
    assert disruption_budget(OWNER, "policy/v1beta1")["spec"]["maxUnavailable"] == 1


def test_under_a_canary_pods_that_pin_no_version_load_none() -> None:
    """A Canary's stable pods load only a version the operator pins: an unpinned pod (the first, before any
    version is known; or one started after the alias moved) must not serve a version no canary judged."""

    def env(spec: ModelDeploymentSpec, version: str | None, canary_replicas: int | None = None) -> dict[str, str]:
        containers = deployment(OWNER, spec, PodDefaults(), version, canary_replicas)["spec"]["template"]["spec"]
        return {e["name"]: e.get("value") for e in containers["containers"][0]["env"]}

    canary_spec = _spec(spec__rollout={"strategy": "Canary", "steps": [{"weight": 50, "minRequests": 10}]})
    assert env(canary_spec, None)["REGROW_AWAIT_VERSION"] == "True"
    assert "REGROW_AWAIT_VERSION" not in env(canary_spec, "v1")  # pinned: it loads that
    assert "REGROW_AWAIT_VERSION" not in env(canary_spec, "v2", canary_replicas=1)  # the candidate's: pinned
    assert "REGROW_AWAIT_VERSION" not in env(_spec(), None)  # a rolling update's pods follow the alias themselves


def test_only_pods_within_their_grace_period_are_shutting_down() -> None:
    """A pod past its deletionTimestamp (a lost node, a finalizer) is stuck, not draining: it holds back no canary."""
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def deleting(at: str) -> Obj:
        return {"metadata": {"name": at, "deletionTimestamp": at}}

    pods = [deleting("2026-12-01T12:00:30Z"), deleting("2026-12-01T11:59:59Z"), deleting("2026-12-01T12:00:01Z")]
    assert shutting_down(pods, now) == 2 and shutting_down([], now) == 0


def test_a_template_made_for_another_alias_pins_nothing_for_this_one() -> None:
    """After a spec edit to another registry, model or alias, the version the old template pinned is no version
    of the new alias: the decision starts from nothing."""
    template = deployment(OWNER, _spec(), PodDefaults(), "v3")["spec"]["template"]
    assert follows(template, _spec().model)
    for change in ({"spec__model__alias": "staging"}, {"spec__model__name": "wine"},
                   {"spec__model__registry": "s3://other/registry"}):  # fmt: skip
        assert not follows(template, _spec(**change).model)


def test_a_status_reading_counts_only_for_the_alias_it_was_read_of() -> None:
    recorded = {"alias": {"ref": "file:///var/lib/regrow/registry/iris@champion", "version": "v3", "generation": 9}}
    assert _recorded(_spec(), recorded) == AliasReading(version="v3", generation=9)
    assert _recorded(_spec(spec__model__alias="staging"), recorded) is None  # another alias: its own generations
    assert _recorded(_spec(spec__model__registry="s3://other/registry"), recorded) is None
    assert _recorded(_spec(), {}) is None and _recorded(_spec(), {"alias": {"version": "v3"}}) is None


def test_the_prediction_log_gets_its_settings_and_a_writable_store() -> None:
    def container(spec: ModelDeploymentSpec) -> Obj:
        return deployment(OWNER, spec, PodDefaults(), None)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]

    logging = container(_spec())  # the example samples 10% of requests
    env = {e["name"]: e.get("value") for e in logging["env"]}
    assert (env["REGROW_PREDICTION_LOG_PERCENT"], env["REGROW_PREDICTION_LOG_MAX_QUEUE"]) == ("10", "10000")
    assert [m["readOnly"] for m in logging["volumeMounts"] if m["name"] == "store"] == [False]
    quiet = container(_spec(spec__predictionLog=..., spec__labellers=...))
    assert "REGROW_PREDICTION_LOG_PERCENT" not in {e["name"] for e in quiet["env"]}
    assert [m["readOnly"] for m in quiet["volumeMounts"] if m["name"] == "store"] == [True]


def test_a_shadow_reaches_no_client_logs_nothing_and_the_stable_pods_know_where_it_is() -> None:
    shadowed = _with(_example("ModelDeployment"), "spec.rollout",
                     {"strategy": "Canary", "steps": [{"mirror": 50, "minRequests": 100}]})["spec"]  # fmt: skip
    spec = parse_spec(ModelDeploymentSpec, shadowed)
    shadow = deployment(OWNER, spec, PodDefaults(), "v4", 2, shadow_percent=50)
    template = shadow["spec"]["template"]
    pods = template["metadata"]["labels"]
    assert "regrow.dev/modeldeployment" not in pods  # what the Service selects
    assert not service(OWNER)["spec"]["selector"].items() <= pods.items()
    assert shadow_service(OWNER)["spec"]["selector"].items() <= pods.items()
    assert shadow["spec"]["selector"]["matchLabels"].items() <= pods.items() and shadow["spec"]["replicas"] == 2
    assert shadow["metadata"]["name"] == shadow_service(OWNER)["metadata"]["name"] == "iris-shadow"
    assert restricted_violations(template["spec"]) == []
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["REGROW_SHADOW_PERCENT"], env["REGROW_MODEL_VERSION"]) == ("50", "v4")
    assert not {"REGROW_PREDICTION_LOG_PERCENT", "REGROW_SHADOW_URL"} & set(env)
    assert [m["readOnly"] for m in container["volumeMounts"] if m["name"] == "store"] == [True]
    stable_env = deployment(OWNER, spec, PodDefaults(cluster_domain="corp.example"), "v3")["spec"]["template"]["spec"][
        "containers"][0]["env"]  # fmt: skip
    stable = {e["name"]: e.get("value") for e in stable_env}
    # Fully qualified, ending in a dot: a missing Service resolves nowhere through the DNS search path.
    assert stable["REGROW_SHADOW_URL"] == shadow_url(OWNER, "corp.example") == "http://iris-shadow.ml.svc.corp.example."
    (port,) = shadow_service(OWNER)["spec"]["ports"]  # what the URL reaches is the Service's port
    assert (urllib.parse.urlsplit(stable["REGROW_SHADOW_URL"]).port or 80) == port["port"]
    # Both hold the deployment's key, which the shadow's handshake proves, though neither logs predictions.
    unlogged = spec.model_copy(update={"prediction_log": None})
    assert unlogged.keyed and not unlogged.logs_predictions

    def env_of(*args: Any, **kwargs: Any) -> dict[str, Any]:
        container = deployment(OWNER, unlogged, PodDefaults(), *args, **kwargs)["spec"]["template"]["spec"]
        return {e["name"]: e for e in container["containers"][0]["env"]}

    keys = [env_of("v3"), env_of("v4", 2, shadow_percent=50)]
    assert [e["REGROW_FEEDBACK_KEY"]["valueFrom"]["secretKeyRef"]["name"] for e in keys] == ["iris-feedback-key"] * 2
    canary = env_of("v4", 1)  # it mirrors nothing and is mirrored to by none
    assert not {"REGROW_SHADOW_URL", "REGROW_SHADOW_PERCENT", "REGROW_FEEDBACK_KEY"} & set(canary)
    plain = deployment(OWNER, _spec(), PodDefaults(), "v3")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "REGROW_SHADOW_URL" not in {e["name"] for e in plain}  # no shadow step, nothing to ask: no roll either


def test_a_spec_without_resources_gets_the_defaults() -> None:
    """The HPA measures CPU against the request, and the server's threads come from the CPU limit."""
    unset = deployment(OWNER, _spec(spec__resources=...), PodDefaults(), None)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert unset["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    own = deployment(OWNER, _spec(), PodDefaults(), None)["spec"]["template"]["spec"]["containers"][0]
    assert own["resources"] == _spec().resources.to_wire()  # type: ignore[union-attr]  # the spec's win


def test_the_server_bounds_reach_the_pods() -> None:
    def env(spec: ModelDeploymentSpec) -> dict[str, str]:
        container = deployment(OWNER, spec, PodDefaults(), None)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    assert (env(_spec())["REGROW_MAX_CONNECTIONS"], env(_spec())["REGROW_MAX_ROWS"]) == ("1000", "10000")
    assert env(_spec())["REGROW_SHED_AFTER_MS"] == "100"
    bounded = env(_spec(spec__server={"maxConnections": 50, "maxRows": 256, "shedAfterMilliseconds": 30}))
    assert (bounded["REGROW_MAX_CONNECTIONS"], bounded["REGROW_MAX_ROWS"], bounded["REGROW_SHED_AFTER_MS"]) == (
        "50", "256", "30"
    )  # fmt: skip


def test_a_metrics_port_reaches_the_pods_their_annotations_and_the_drift_checks() -> None:
    def pod(defaults: PodDefaults) -> Manifest:
        template = deployment(OWNER, _spec(), defaults, None)["spec"]["template"]
        return {**template, "status": {"podIP": "10.1.2.3"}}

    shared, apart = pod(PodDefaults(metrics_port=0)), pod(PodDefaults())  # /metrics apart, by default
    assert (metrics_address(shared), metrics_address(apart)) == ("10.1.2.3:8080", "10.1.2.3:9090")
    assert shared["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert apart["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    container = apart["spec"]["containers"][0]
    assert {"name": "REGROW_METRICS_PORT", "value": "9090"} in container["env"]
    assert [p["name"] for p in container["ports"]] == ["http", "metrics"]
    assert "REGROW_METRICS_PORT" not in {e["name"] for e in shared["spec"]["containers"][0]["env"]}
