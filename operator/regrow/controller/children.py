"""Children converge to the manifests regrow builds, by server-side apply as the field manager ``regrow``.

A field regrow sets and someone else changed is set back; a field regrow set and no longer sets is removed
(unless another manager set it too); a field regrow does not set is left to whoever does. A Deployment's
replicas are set once, at creation, by a manager of their own (``regrow-replicas``; left to the API server's
default when that is the number): regrow's later applies leave them out, so they stay the autoscaler's and are
never reset.

A child is applied only when the live object (from the watch-fed cache) lacks a value regrow sets, or the
desired manifest changed since it was last applied (its digest is kept in an annotation): a look at a
ModelDeployment that nothing changed writes nothing.

Children made before server-side apply (created, then merge-patched, with the digest in another annotation)
are taken over at their first apply: the fields regrow sets become its own, and the old writes' ownership and
annotation are dropped, so that what regrow no longer sets is removed from them too. The pod template is what
it was, so nothing rolls, and their replicas are left as they are.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from regrow import GROUP
from regrow.controller.kube import Applier, Obj, path

HASH_ANNOTATION = f"{GROUP}/applied-hash"
LEGACY_HASH_ANNOTATION = f"{GROUP}/spec-hash"  # on children made by merge patches, before server-side apply
REPLICAS_MANAGER = "regrow-replicas"
DEFAULTED = {"replicas": 1}  # what the API server gives a Deployment's fields when they are left out
LEGACY_MANAGER = "OpenAPI-Generator"  # the Python client's User-Agent, which named the manager of those writes
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


def holds(live: Any, desired: Any) -> bool:
    """Whether ``live`` has every value ``desired`` sets: objects key by key (the API server's defaults and
    other managers' fields may be there too), lists item by item, anything else equal. A zero value (an empty
    list, object or string, false, 0) holds where there is none: the API server leaves them out."""
    if live is None and desired in ([], {}, "", False):  # 0 == False
        return True
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(holds(live.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(holds, live, desired))
    return bool(live == desired)


def ensure(api: Applier, manifest: Obj, unmanaged: tuple[str, ...] = ()) -> Applied:
    """Bring the child ``manifest`` describes to it, creating it if need be. ``unmanaged`` names spec fields
    that are set on creation only (a Deployment's replicas, which its autoscaler owns afterwards)."""
    desired = copy.deepcopy(manifest)
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    desired["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    where = object_path(desired)
    live = api.get(where)
    for name in unmanaged:  # left out of a creation too when the API server would give the same value
        if live is not None or desired["spec"].get(name) == DEFAULTED.get(name):
            desired["spec"].pop(name, None)
    annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
    current = annotations.get(HASH_ANNOTATION) == digest and LEGACY_HASH_ANNOTATION not in annotations
    if live is not None and current and holds(live, desired):
        return Applied(live, "unchanged")
    applied = api.apply(where, desired)
    handed = {name: desired["spec"][name] for name in unmanaged if name in desired["spec"]}
    if live is None and handed:
        applied = api.apply(where, {**_identity(desired), "spec": handed}, REPLICAS_MANAGER)
    if LEGACY_HASH_ANNOTATION in annotations:
        applied = _take_over(api, where, applied)
    return Applied(applied, "created" if live is None else "patched")


def _identity(manifest: Obj) -> Obj:
    meta = manifest["metadata"]
    return {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}  # fmt: skip


def _take_over(api: Applier, where: str, applied: Obj) -> Obj:
    """A child made before server-side apply, just applied: drop what its old create and merge patches own
    (recorded under the client's default manager) and their digest annotation."""
    meta = applied["metadata"]
    kept = [e for e in meta.get("managedFields") or [] if e.get("manager") != LEGACY_MANAGER]
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "managedFields": kept,
                          "annotations": {LEGACY_HASH_ANNOTATION: None}}}  # fmt: skip
    return api.patch(where, patch)
