"""The children of a ModelDeployment: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget, and
with a prediction log or a shadow step the Secret of its key (which signs prediction ids, and authenticates
a shadow's pods and the stable ones to each other)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from regrow import GROUP
from regrow.api.common import parse_duration
from regrow.api.modeldeployment import ModelDeploymentSpec
from regrow.contracts import ServingEnv
from regrow.manifests.common import (
    SERVING_RESOURCES,
    Manifest,
    Owner,
    PodDefaults,
    container_security_context,
    pod_security_context,
    resources,
    storage_env,
    storage_volumes,
    with_pod_options,
)

COMPONENT = "predictor"
CANARY = "canary"  # the component of a canary's Deployment and pods
SHADOW = "shadow"  # the component of a shadow candidate's Deployment, pods and Service
SHADOW_PERCENT_ENV = ServingEnv.variable("shadow_percent")
SHADOW_OF = f"{GROUP}/shadow-of"  # a shadow pod's label in place of ``modeldeployment``: no client reaches it
CONTAINER = "server"
PORT = 8080
METRICS = "metrics"  # the name of the container port for /metrics and the profile, when it is not PORT
VERSION_ANNOTATION = f"{GROUP}/model-version"
FEEDBACK_KEY = "key"
LABELLERS_DIR = "/var/run/regrow/labellers"
FEEDBACK_ENV = ServingEnv.variable("feedback_key")
PREVIOUS_KEY_ENV = ServingEnv.variable("feedback_previous_key")
# After SIGTERM a pod answers, reporting not ready, for this long: the time for its removal from the
# Service's endpoints to reach every node's kube-proxy. 5 s lost 2 of 832 requests in a roll on a busy node
# (rules updated late, the old pod's IP already reused by another pod).
DRAIN_SECONDS = 10


def feedback_key_name(owner: Owner, generation: int = 1) -> str:
    """The Secret of the deployment's ``generation``-th key: ``<name>-feedback-key``, then ``-2``, ``-3``…"""
    return owner.child_name("feedback-key" if generation == 1 else f"feedback-key-{generation}")


def feedback_key(owner: Owner, key: str, generation: int = 1) -> Manifest:
    """The Secret that holds the key every replica signs and verifies prediction ids with (see
    ``regrow.serving.feedback``), and a shadow's pods and the stable ones prove themselves to each other with
    (``regrow.serving.mirror``). The operator creates it and never reads it back; a rotation makes the next
    generation's."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata("feedback-key", name=feedback_key_name(owner, generation)),
        "type": "Opaque",
        "stringData": {FEEDBACK_KEY: key},
    }


@dataclass(frozen=True)
class KeyNames:
    """Which of the deployment's keys the pods hold, by generation: the one they sign with, and the one before
    it, which still verifies (None: none)."""

    generation: int = 1
    previous: int | None = None


def _keys(owner: Owner, key: KeyNames) -> dict[str, Manifest]:
    """The environment of the deployment's key, and of the one before it (optional: a Secret deleted to revoke
    it is none), as sources of ServingEnv's fields."""

    def source(generation: int, optional: bool = False) -> Manifest:
        return {"secretKeyRef": {"name": feedback_key_name(owner, generation), "key": FEEDBACK_KEY,
                                 **({"optional": True} if optional else {})}}  # fmt: skip

    before = {"feedback_previous_key": source(key.previous, True)} if key.previous is not None else {}
    return {"feedback_key": source(key.generation), **before}


def metrics_address(pod: Manifest) -> str:
    """Where a serving pod answers /metrics and its reference profile: its port named ``metrics``, else PORT."""
    ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == METRICS]
    return f"{pod['status']['podIP']}:{ports[0]['containerPort'] if ports else PORT}"


def selector(owner: Owner, component: str = COMPONENT) -> dict[str, str]:
    """The labels of one track's pods (the stable ``predictor``, the ``canary`` or the ``shadow``) that never
    change (a Deployment's selector is immutable). A shadow's pods lack the ``modeldeployment`` label that the
    Service selects."""
    return {SHADOW_OF if component == SHADOW else f"{GROUP}/modeldeployment": owner.name,
            "app.kubernetes.io/component": component}  # fmt: skip


def shadow_url(owner: Owner, cluster_domain: str) -> str:
    """Where the stable pods find the shadow Service: its fully qualified name (the trailing dot: no search
    domain is tried, so a missing Service resolves nowhere else)."""
    return f"http://{owner.child_name(SHADOW)}.{owner.namespace}.svc.{cluster_domain}."  # the Service's port 80


def deployment(
    owner: Owner, spec: ModelDeploymentSpec, defaults: PodDefaults, version: str | None,
    canary_replicas: int | None = None, shadow_percent: int | None = None, key: KeyNames = KeyNames(),
) -> Manifest:  # fmt: skip
    """The stable Deployment; ``version`` pins the model version (None: the pods resolve the alias
    themselves, or under a Canary load nothing until one is pinned, so that none serves a version no canary
    judged). The version is in the pod template, so a new version rolls the pods. With
    ``canary_replicas``, the canary's Deployment instead: ``version`` is the candidate, on that many pods; and
    with ``shadow_percent`` too, the shadow's, whose pods ask the stable ones for that percent of their
    requests, log none and reach no client. ``key``: the deployment's keys the pods hold."""
    model = spec.model
    component = COMPONENT if canary_replicas is None else CANARY if shadow_percent is None else SHADOW
    logs = spec.logs_predictions and component != SHADOW
    env, env_from = storage_env(spec.storage)
    volumes, mounts = storage_volumes(spec.storage, read_only=not logs)  # the log writes to the store
    pinned = version if canary_replicas is not None else model.version or version
    logged = logs and spec.prediction_log is not None
    mirroring = component == COMPONENT and spec.rollout.mirrors  # the stable pods mirror to a shadow
    settings = ServingEnv(
        registry=model.registry,
        model_name=model.name,
        model_alias=model.alias,
        model_version=pinned,
        **({"await_version": True} if pinned is None and spec.rollout.strategy == "Canary" else {}),
        refresh_seconds=parse_duration(model.refresh_interval),
        drain_seconds=DRAIN_SECONDS,
        max_connections=spec.server.max_connections,
        max_rows=spec.server.max_rows,
        shed_after_ms=spec.server.shed_after_milliseconds,
        **({"metrics_port": defaults.metrics_port} if defaults.metrics_port else {}),
        storage_endpoint=spec.storage.endpoint_url if spec.storage else None,
        **({"prediction_log_percent": spec.prediction_log.sample_percent,
            "prediction_log_max_queue": spec.prediction_log.max_queue} if logged and spec.prediction_log else {}),
        **({"prediction_log_retention_seconds": parse_duration(spec.prediction_log.retention)}
           if logged and spec.prediction_log and "retention" in spec.prediction_log.model_fields_set else {}),
        **({"label_horizon_seconds": parse_duration(spec.prediction_log.label_horizon)}
           if logged and spec.prediction_log and "label_horizon" in spec.prediction_log.model_fields_set else {}),
        labellers_dir=LABELLERS_DIR if logged and spec.labellers else None,
        shadow_url=shadow_url(owner, defaults.cluster_domain) if mirroring else None,
        **({"shadow_percent": shadow_percent} if component == SHADOW and shadow_percent is not None else {}),
    )  # fmt: skip
    keyed = logged or mirroring or component == SHADOW
    sources = {
        "threads": {"resourceFieldRef": {"containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}},
        **(_keys(owner, key) if keyed else {}),
    }
    model_env = settings.variables(sources)
    if logged:  # each labeller's Secret, mounted (optional: a missing one is a labeller without tokens)
        volumes += [{"name": f"labeller-{who.name}", "secret": {"secretName": who.secret_name, "optional": True}}
                    for who in spec.labellers]  # fmt: skip
        mounts += [{"name": f"labeller-{who.name}", "mountPath": f"{LABELLERS_DIR}/{who.name}", "readOnly": True}
                   for who in spec.labellers]  # fmt: skip
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2, "timeoutSeconds": 2}
    labels = {**owner.labels(component), **selector(owner, component)}
    if component == SHADOW:
        del labels[f"{GROUP}/modeldeployment"]
    template: Manifest = {
        "metadata": {
            "labels": labels,
            "annotations": {
                **({VERSION_ANNOTATION: pinned} if pinned else {}),
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(defaults.metrics_port or PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,  # no $<SERVICE>_PORT variables: they would shadow $REGROW_PORT
            "securityContext": pod_security_context(),
            "terminationGracePeriodSeconds": DRAIN_SECONDS + 25,
            "containers": [
                {
                    "name": CONTAINER,
                    "image": spec.image or defaults.runtime,
                    "imagePullPolicy": defaults.pull_policy,
                    "args": ["serve"],
                    "env": [*model_env, *env],
                    "envFrom": env_from,
                    "ports": [
                        {"name": "http", "containerPort": PORT, "protocol": "TCP"},
                        *(
                            [{"name": METRICS, "containerPort": defaults.metrics_port, "protocol": "TCP"}]
                            if defaults.metrics_port
                            else []
                        ),
                    ],
                    "readinessProbe": {**probe, "failureThreshold": 2},
                    "livenessProbe": {
                        "httpGet": {"path": "/v2/health/live", "port": "http"},
                        "initialDelaySeconds": 10,
                        "periodSeconds": 10,
                        "timeoutSeconds": 2,
                        "failureThreshold": 3,
                    },
                    "resources": resources(spec.resources, SERVING_RESOURCES),
                    "securityContext": container_security_context(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, *volumes],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(component),
        "spec": {
            "replicas": spec.replicas.min if canary_replicas is None else canary_replicas,
            "selector": {"matchLabels": selector(owner, component)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": spec.rollout.max_surge},
            },
            "progressDeadlineSeconds": 300,
            "template": with_pod_options(template, spec.pod, selector(owner, component)),
        },
    }


def alias_job(
    owner: Owner, spec: ModelDeploymentSpec, defaults: PodDefaults, moves: tuple[str, str], nonce: str
) -> Manifest:
    """The Job that moves the alias from ``moves[0]`` to ``moves[1]`` if it still points at the first (back
    from a rolled-back candidate, or on to a version a person asks to try again): it runs the runtime image
    with the store's credentials, which the operator never holds. One per move and ``nonce`` (the canary's
    start, the request's time), so each is made once. Its pods carry no ``modeldeployment`` label, so the
    Service never sends them requests."""
    assert spec.model.alias is not None
    source, target = moves
    env, env_from = storage_env(spec.storage)
    volumes, mounts = storage_volumes(spec.storage, read_only=False)
    component = f"alias-{hashlib.sha256(f'{source}>{target}@{nonce}'.encode()).hexdigest()[:10]}"
    labels = {k: v for k, v in owner.labels("alias").items() if k != f"{GROUP}/modeldeployment"}
    args = ["move-alias", f"--registry={spec.model.registry}", f"--model={spec.model.name}",
            f"--alias={spec.model.alias}", f"--from={source}", f"--to={target}"]  # fmt: skip
    endpoint = spec.storage.endpoint_url if spec.storage else None
    container = {
        "name": "alias",
        "image": defaults.runtime,
        "imagePullPolicy": defaults.pull_policy,
        "args": args,
        "env": [
            {"name": "HOME", "value": "/tmp"},
            *env,
            *([{"name": "REGROW_STORAGE_ENDPOINT", "value": endpoint}] if endpoint else []),
        ],
        "envFrom": env_from,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**owner.metadata(component), "labels": labels},
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 300,
            "template": with_pod_options(
                {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": pod_security_context(),
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *volumes],
                    },
                },
                spec.pod,
                labels,
            ),
        },
    }


def service(owner: Owner) -> Manifest:
    """The Service in front of both tracks: kube-proxy spreads connections over the stable and the canary
    pods alike, so the canary's share of traffic is its share of the pods. No other pod carries the
    ``modeldeployment`` label."""
    return _cluster_ip(owner, COMPONENT, {f"{GROUP}/modeldeployment": owner.name})


def shadow_service(owner: Owner) -> Manifest:
    """The Service in front of a shadow candidate's pods, for the stable pods to mirror to (``shadow_url``)."""
    return _cluster_ip(owner, SHADOW, {SHADOW_OF: owner.name})


def _cluster_ip(owner: Owner, component: str, pods: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(component),
        "spec": {
            "type": "ClusterIP",
            "selector": pods,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(owner: Owner, spec: ModelDeploymentSpec, api_version: str) -> Manifest:
    """An HPA on CPU; ``autoscaling/v2`` and ``v2beta2`` share this shape."""
    return {
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": owner.metadata(COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.child_name(COMPONENT)},
            "minReplicas": spec.replicas.min,
            "maxReplicas": spec.replicas.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.autoscaling.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }


def disruption_budget(owner: Owner, api_version: str) -> Manifest:
    """At most one pod down at a time for voluntary disruptions (``policy/v1`` and ``v1beta1`` agree)."""
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": owner.metadata(COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(owner)}},
    }
