"""What every child object shares: names, labels, owner references, security contexts, storage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from regrow import API_VERSION, GROUP, __version__
from regrow.api.common import ResourceRequirements, StorageSpec
from regrow.api.pod import PodOptions

Manifest = dict[str, Any]
NAME_LIMIT = 63  # names that become label values (Job names do) must fit a label
NON_ROOT_UID = 65532
STORE_VOLUME = "store"


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the children being built."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(body["kind"], meta["name"], meta["namespace"], meta["uid"])

    def reference(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def child_name(self, component: str) -> str:
        """``<name>-<component>``, shortened with a hash of the full name when it would exceed 63."""
        name = f"{self.name}-{component}"
        if len(name) <= NAME_LIMIT:
            return name
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        keep = NAME_LIMIT - len(component) - len(digest) - 2
        return f"{self.name[:keep].rstrip('-.')}-{digest}-{component}"

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"regrow-{component}",
            "app.kubernetes.io/instance": self.child_name(component),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "regrow",
            "app.kubernetes.io/managed-by": "regrow",
            f"{GROUP}/{self.kind.lower()}": self.name,
        }

    def metadata(self, component: str, **extra: Any) -> Manifest:
        return {
            "name": self.child_name(component),
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.reference()],
            **extra,
        }


def pod_security_context() -> Manifest:
    """Pod Security Standards "restricted": non-root, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# What a pod gets when its spec sets no resources: the CPU HPA measures utilisation against the request,
# and the server's onnxruntime threads come from the CPU limit (a pod without one would take the node's).
SERVING_RESOURCES = ResourceRequirements(
    requests={"cpu": "500m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "1Gi"}
)
TRAINING_RESOURCES = ResourceRequirements(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "2", "memory": "4Gi"})


def resources(spec: ResourceRequirements | None, default: ResourceRequirements) -> Manifest:
    """The spec's resources, or the kind's defaults when it sets none."""
    return (spec or default).to_wire()


def storage_env(storage: StorageSpec | None) -> tuple[list[Manifest], list[Manifest]]:
    """``env`` and ``envFrom`` that give a container the store's region and credentials."""
    if storage is None:
        return [], []
    env = [{"name": "AWS_DEFAULT_REGION", "value": storage.region}] if storage.region else []
    env_from = [{"secretRef": {"name": storage.secret_ref.name}}] if storage.secret_ref else []
    return env, env_from


def storage_volumes(storage: StorageSpec | None, *, read_only: bool) -> tuple[list[Manifest], list[Manifest]]:
    """``volumes`` and ``volumeMounts`` for the claim that holds file:// stores, if any."""
    if storage is None or storage.volume_claim_name is None:
        return [], []
    volume = {
        "name": STORE_VOLUME,
        "persistentVolumeClaim": {"claimName": storage.volume_claim_name, "readOnly": read_only},
    }
    mount = {"name": STORE_VOLUME, "mountPath": storage.mount_path, "readOnly": read_only}
    return [volume], [mount]


@dataclass(frozen=True)
class PodDefaults:
    """What the operator gives the pods it makes, from its own settings (the chart's values): the image of those
    whose spec names none (one image serves and trains), and the serving pods' metrics port (a port: that port
    alone answers /metrics and the reference profile, so that clients of the inference port read neither; 0:
    the inference port does)."""

    runtime: str = f"regrow-serving:{__version__}"
    pull_policy: str = "IfNotPresent"
    metrics_port: int = 9090
    cluster_domain: str = "cluster.local"  # the cluster's DNS domain (the kubelet's clusterDomain)
    # The images a spec may name besides the runtime (the chart's allowedImages): an entry names one image,
    # or, ending in "/", ":" or "@", every image under it (a registry or repository, its tags, its digests).
    allowed_images: tuple[str, ...] = ()
    # The service accounts a spec's pod.serviceAccountName may name (the chart's allowedServiceAccounts): a name
    # allows it in every namespace, namespace/name in one. Empty: none.
    allowed_service_accounts: tuple[str, ...] = ()
    # The taint keys a spec's pod.tolerations may tolerate (the chart's allowedTolerations); "*" allows any, and
    # a toleration of every taint (no key). Empty: none.
    allowed_tolerations: tuple[str, ...] = ()

    def check_image(self, image: str | None) -> None:
        """Raise if a spec's ``image`` is not one the operator's settings allow: whoever can create a
        TrainingJob or ModelDeployment in a namespace runs that image there, with its storage."""
        if image is None or image == self.runtime:
            return
        if not any(image == a or (a[-1] in "/:@" and image.startswith(a)) for a in self.allowed_images):
            allowed = ", ".join(self.allowed_images) or "none but the runtime image"
            raise ValueError(f"image {image} is not one the operator allows (the chart's allowedImages: {allowed})")

    def check_pod(self, options: PodOptions | None, namespace: str) -> None:
        """Raise if ``options`` reach past the namespace further than the operator's settings allow: a service
        account (which may hold cloud credentials) or a toleration (which reaches dedicated nodes)."""
        if options is None:
            return
        account = options.service_account_name
        if account and not {account, f"{namespace}/{account}"} & set(self.allowed_service_accounts):
            allowed = ", ".join(self.allowed_service_accounts) or "none"
            raise ValueError(f"pod.serviceAccountName {account} is not one the operator allows in namespace "
                             f"{namespace} (the chart's allowedServiceAccounts: {allowed})")  # fmt: skip
        for toleration in options.tolerations:
            if "*" not in self.allowed_tolerations and (toleration.key or "*") not in self.allowed_tolerations:
                allowed = ", ".join(self.allowed_tolerations) or "none"
                what = f"taint {toleration.key}" if toleration.key else "every taint"
                raise ValueError(f"pod.tolerations: tolerating {what} is not allowed by the operator "
                                 f"(the chart's allowedTolerations: {allowed})")  # fmt: skip


def with_pod_options(template: Manifest, options: PodOptions | None, selector: dict[str, str]) -> Manifest:
    """A pod template with what ``options`` add: labels and annotations (the operator's own win, though the API
    refuses their keys), and spec fields. A topology spread constraint without a selector spreads the pods that
    ``selector`` selects. Without options, the template as it was: nothing rolls."""
    if options is None:
        return template
    meta = template["metadata"]
    meta["labels"] = {**options.labels, **meta.get("labels", {})}
    if options.annotations:
        meta["annotations"] = {**options.annotations, **meta.get("annotations", {})}
    spec = options.template()
    for constraint in spec.get("topologySpreadConstraints", []):
        constraint.setdefault("labelSelector", {"matchLabels": selector})
    template["spec"].update(spec)
    return template
