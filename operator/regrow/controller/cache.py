"""Watch-fed caches of what the operator owns, and an Api that reads from them.

As controller-runtime's informers do: each kind of child the operator makes (Deployments, Services, autoscalers,
disruption budgets, Jobs) and the pods of its Deployments and Jobs is listed once, then watched, selected on the
API server by the label every child carries (``app.kubernetes.io/managed-by=regrow``). Reconcilers read through
``Cached``, the same four-method Api, so a GET of a child or a list of pods is a lookup once the caches have
synced (before, a call). Every change of a cached object is mapped to its owner (its controller reference to a
regrow kind, or for a pod the label that names its ModelDeployment or TrainingJob), which is reconciled at once:
a child edited or deleted by someone else is put back within a second, not at the next resync.

The operator's own writes go into the cache as they are answered, so the next reconcile reads what it wrote
even before the watch delivers it. Objects are cached without ``metadata.managedFields``, which the operator
never reads and which would double what it holds.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from regrow import GROUP
from regrow.controller.kube import MANAGER, Applier, Expired, Kube, Obj

log = logging.getLogger(__name__)
MANAGED = "app.kubernetes.io/managed-by=regrow"
RETRY_SECONDS = (1.0, 30.0)  # a failed list or watch is tried again after 1 s, doubling up to 30 s
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
Key = tuple[str, str, str]  # (plural, namespace, name) of an owner


@dataclass(frozen=True)
class Resource:
    api_version: str  # "v1", "apps/v1"
    plural: str

    def collection(self, namespace: str | None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"


def parse(path: str) -> tuple[Resource, str, str | None] | None:
    """The resource, namespace and name (None: the collection) a namespaced REST path names; None for
    any other path (a subresource, a cluster-scoped object)."""
    found = _PATH.match(path)
    if found is None:
        return None
    return Resource(found["core"] or found["gv"], found["plural"]), found["ns"], found["name"]


def _newer(candidate: Obj, held: Obj | None) -> bool:
    """Whether ``candidate`` is a later state of the object than ``held``. resourceVersions are opaque, but
    etcd's are increasing integers; any other is taken as newer."""
    if held is None:
        return True
    a, b = candidate["metadata"].get("resourceVersion", ""), held["metadata"].get("resourceVersion", "")
    return not (a.isdigit() and b.isdigit()) or int(a) >= int(b)


def _lean(obj: Obj) -> Obj:
    """``obj`` without managedFields: a shallow copy, so the caller's object keeps them."""
    meta = obj["metadata"]
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def selects(selector: str, labels: dict[str, str]) -> bool | None:
    """Whether ``labels`` match an equality selector (``a=b,c=d``); None for a selector of another form."""
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!") or value.startswith("="):
            return None
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@dataclass
class Store:
    """One resource's objects, by (namespace, name)."""

    items: dict[tuple[str, str], Obj] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    synced: threading.Event = field(default_factory=threading.Event)
    # Whether an object it lacks does not exist. An informer's store is, once listed; a store that kopf's
    # watch events fill (the regrow kinds) is not: kopf does not say when it has listed them all.
    complete: bool = True

    def get(self, namespace: str, name: str) -> Obj | None:
        with self.lock:
            found = self.items.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def select(self, namespace: str, selector: str) -> list[Obj] | None:
        with self.lock:
            held = [o for (ns, _), o in self.items.items() if ns == namespace]
        chosen = []
        for obj in held:
            match = selects(selector, obj["metadata"].get("labels") or {})
            if match is None:
                return None
            if match:
                chosen.append(copy.deepcopy(obj))
        return chosen

    def put(self, obj: Obj) -> bool:
        """Hold ``obj`` if it is newer than what is held; whether it was."""
        obj = _lean(obj)  # before comparing: the watch's copy of the operator's own write is no change
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self.lock:
            held = self.items.get(key)
            if not _newer(obj, held) or (held is not None and held == obj):
                return False
            self.items[key] = obj
            return True

    def remove(self, obj: Obj) -> bool:
        meta = obj["metadata"]
        with self.lock:
            return self.items.pop((meta.get("namespace", ""), meta["name"]), None) is not None

    def replace(self, objs: Iterable[Obj], namespace: str | None) -> list[Obj]:
        """Hold exactly ``objs`` (of ``namespace``, or of all): what changed, those gone included."""
        fresh = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): _lean(o) for o in objs}
        with self.lock:
            mine = {k: v for k, v in self.items.items() if namespace is None or k[0] == namespace}
            changed = [o for k, o in fresh.items() if mine.get(k) != o] + [o for k, o in mine.items() if k not in fresh]
            for k in mine.keys() - fresh.keys():
                del self.items[k]
            self.items.update(fresh)
        return changed


class Informer:
    """Lists, then watches, one resource (cluster-wide or in one namespace) selected by MANAGED into its
    store, and tells ``changed`` of every object that changed. A watch that ends is resumed from its last
    resourceVersion; one too old to resume is listed again; a failure is retried with a backoff."""

    def __init__(
        self, kube: Kube, resource: Resource, namespace: str | None, store: Store, changed: Callable[[Obj], None]
    ) -> None:
        self.kube, self.resource, self.namespace, self.store, self.changed = kube, resource, namespace, store, changed

    def run(self, stop: threading.Event) -> None:
        delay = RETRY_SECONDS[0]
        where = self.resource.collection(self.namespace)
        while not stop.is_set():
            try:
                listed = self.kube.collection(where, MANAGED)
                for obj in self.store.replace(listed.get("items") or [], self.namespace):
                    self.changed(obj)
                self.store.synced.set()
                version = listed["metadata"]["resourceVersion"]
                while not stop.is_set():
                    for event in self.kube.watch(where, MANAGED, version):
                        version = self._apply(event) or version
                        delay = RETRY_SECONDS[0]
            except Expired:
                continue
            except Exception as error:  # whatever it was, the cache must go on being filled
                if stop.is_set():
                    return  # stopped while it waited on the API server, which has gone since
                log.warning("Watching %s failed (%s); listing again in %.0fs", where, error, delay)
                stop.wait(delay)
                delay = min(RETRY_SECONDS[1], delay * 2)

    def _apply(self, event: Obj) -> str | None:
        """Apply one watch event; the resourceVersion to resume from after it."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise ValueError(f"unexpected watch event {kind}")
        version: str | None = (obj.get("metadata") or {}).get("resourceVersion")
        changed = self.store.remove(obj) if kind == "DELETED" else kind != "BOOKMARK" and self.store.put(obj)
        if changed:
            self.changed(obj)
        return version


def owners(obj: Obj, kinds: dict[str, str]) -> set[Key]:
    """The regrow objects a cached object belongs to (``kinds`` maps a regrow kind to its plural): its
    controller's, and those its labels name (a pod's ModelDeployment, the shadow's or its TrainingJob)."""
    meta = obj["metadata"]
    namespace, labels = meta.get("namespace", ""), meta.get("labels") or {}
    found = {
        (kinds[ref["kind"]], namespace, ref["name"])
        for ref in meta.get("ownerReferences") or []
        if ref.get("controller") and ref.get("apiVersion", "").startswith(f"{GROUP}/") and ref.get("kind") in kinds
    }
    named = {f"{GROUP}/{kind.lower()}": plural for kind, plural in kinds.items()}
    if "ModelDeployment" in kinds:
        named[f"{GROUP}/shadow-of"] = kinds["ModelDeployment"]
    return found | {(plural, namespace, labels[label]) for label, plural in named.items() if label in labels}


class Cached:
    """The Api, reading what the caches hold once they have synced (before that, and for anything else,
    asking the API server), and keeping what the API server answers to its writes."""

    def __init__(self, kube: Applier, stores: dict[Resource, Store]) -> None:
        self.kube, self.stores = kube, stores

    def _store(self, path: str) -> tuple[Store, str, str | None] | None:
        parsed = parse(path)
        if parsed is None:
            return None
        resource, namespace, name = parsed
        store = self.stores.get(resource)
        return (store, namespace, name) if store is not None and store.synced.is_set() else None

    def get(self, path: str) -> Obj | None:
        found = self._store(path)
        held = found[0].get(found[1], found[2]) if found is not None and found[2] is not None else None
        if held is None and (found is None or not found[0].complete):
            return self.kube.get(path)
        return held

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        found = self._store(path)
        chosen = found[0].select(found[1], label_selector) if found is not None and found[2] is None else None
        return self.kube.list(path, label_selector) if chosen is None else chosen

    def create(self, path: str, body: Obj) -> Obj:
        return self._keep(path + "/" + body["metadata"].get("name", ""), self.kube.create(path, body))

    def patch(self, path: str, body: Obj) -> Obj:
        return self._keep(path, self.kube.patch(path, body))

    def apply(self, path: str, body: Obj, manager: str = MANAGER) -> Obj:
        return self._keep(path, self.kube.apply(path, body, manager))

    def _keep(self, path: str, answer: Obj) -> Obj:
        parsed = parse(path.removesuffix("/status"))
        store = self.stores.get(parsed[0]) if parsed is not None else None
        if store is not None:  # a copy, which the caller may still change
            store.put(copy.deepcopy(_lean(answer)))
        return answer
