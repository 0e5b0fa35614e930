"""Create-or-patch of child objects, idempotent and cheap: a child is patched only when the hash of its
desired manifest (kept in an annotation) changed."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

from regrow import GROUP
from regrow.controller.kube import Api, Conflict, Obj, path

HASH_ANNOTATION = f"{GROUP}/spec-hash"
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


@dataclass(frozen=True)
class Applied:
    obj: Obj
    action: str  # created | patched | unchanged


def object_path(manifest: Obj) -> str:
    meta = manifest["metadata"]
    return path(manifest["apiVersion"], PLURALS[manifest["kind"]], meta["namespace"], meta["name"])


def ensure(api: Api, manifest: Obj, unmanaged: tuple[str, ...] = ()) -> Applied:
    """Create ``manifest`` or bring the live object to it. ``unmanaged`` names spec fields that are set on
    creation only (such as a Deployment's replicas, which its autoscaler owns afterwards)."""
    desired = copy.deepcopy(manifest)
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    desired["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    where = object_path(desired)
    live = api.get(where)
    if live is None:
        try:
            return Applied(api.create(where.rsplit("/", 1)[0], desired), "created")
        except Conflict:
            live = api.get(where)
            assert live is not None
    if (live["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) == digest:
        return Applied(live, "unchanged")
    for name in unmanaged:
        desired["spec"].pop(name, None)
    return Applied(api.patch(where, desired), "patched")
