"""The batch/v1 Job that runs one TrainingJob."""

from __future__ import annotations

import json

from regrow.api.trainingjob import TrainingJobSpec
from regrow.manifests.common import (
    TRAINING_RESOURCES,
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

COMPONENT = "train"
CONTAINER = "trainer"


def training_job(owner: Owner, spec: TrainingJobSpec, defaults: PodDefaults) -> Manifest:
    env, env_from = storage_env(spec.storage)
    volumes, mounts = storage_volumes(spec.storage, read_only=False)
    labels = owner.labels(COMPONENT)
    job_spec: Manifest = {
        "backoffLimit": spec.backoff_limit,
        "template": with_pod_options(
            {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,  # no $<SERVICE>_PORT variables: they would shadow $REGROW_PORT
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": spec.image or defaults.runtime,
                            "imagePullPolicy": defaults.pull_policy,
                            "args": ["train"],
                            "env": [
                                {"name": "REGROW_TRAINING_SPEC", "value": json.dumps(_trainers(spec), sort_keys=True)},
                                {"name": "REGROW_RUN_NAMESPACE", "value": owner.namespace},
                                {"name": "REGROW_RUN_NAME", "value": owner.name},
                                {"name": "REGROW_RUN_UID", "value": owner.uid},
                                {"name": "HOME", "value": "/tmp"},
                                *env,
                            ],
                            "envFrom": env_from,
                            "resources": resources(spec.resources, TRAINING_RESOURCES),
                            "securityContext": container_security_context(),
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *volumes],
                },
            },
            spec.pod,
            labels,
        ),
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(COMPONENT),
        "spec": job_spec,
    }


def _trainers(spec: TrainingJobSpec) -> dict[str, object]:
    """The spec as the trainer reads it: where its pod runs is the Job's business, not the trainer's."""
    return {key: value for key, value in spec.to_wire().items() if key != "pod"}
