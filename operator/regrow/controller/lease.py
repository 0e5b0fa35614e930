"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go's leaderelection does it.

Every replica tries to take or renew the Lease every ``retry`` seconds; only the holder reconciles. A
holder's claim expires when its ``renewTime`` has not changed for ``duration`` seconds of the observer's
own clock (so clocks on different nodes need not agree). Every write carries the ``resourceVersion`` it
read, so two replicas racing for an expired Lease cannot both win. A holder that stops gives the Lease
up, so a standby takes over at its next retry instead of after ``duration``.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException

from regrow.controller.kube import Api, Conflict, Obj, path

log = logging.getLogger(__name__)


def new_identity() -> str:
    """This process's name as a Lease holder (and kopf's identity): its host name and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def micro_now() -> str:
    """metav1.MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.identity, self.duration, self.monotonic = api, identity, duration, monotonic
        self.namespace, self.name = namespace, name
        self.collection = path("coordination.k8s.io/v1", "leases", namespace)
        self.leading = False
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self._renewed_at = 0.0

    def _spec(self, previous: Obj, now: str) -> Obj:
        changed = previous.get("holderIdentity") != self.identity
        transitions = previous.get("leaseTransitions", 0) + (1 if changed and previous else 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": now if changed else previous.get("acquireTime", now),
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; return whether this replica leads."""
        was = self.leading
        try:
            self.leading = self._try()
            if self.leading:
                self._renewed_at = self.monotonic()
        except (ApiException, OSError) as error:  # the API server is unreachable: lead on only while the claim lasts
            self.leading = self.leading and self.monotonic() - self._renewed_at < self.duration * 2 / 3
            log.warning("Could not renew Lease %s/%s: %s", self.namespace, self.name, error)
        if self.leading != was:
            log.info("%s leadership of Lease %s/%s", "Took" if self.leading else "Lost", self.namespace, self.name)
        return self.leading

    def _try(self) -> bool:
        lease = self.api.get(f"{self.collection}/{self.name}")
        now = micro_now()
        if lease is None:
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec({}, now)}
            try:
                self.api.create(self.collection, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **body})
            except Conflict:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        seen = (holder, spec.get("renewTime") or "")
        if seen != self._seen:
            self._seen, self._seen_at = seen, self.monotonic()
        expired = self.monotonic() - self._seen_at > spec.get("leaseDurationSeconds", self.duration)
        if holder and holder != self.identity and not expired:
            return False
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": self._spec(spec, now)}
        try:
            self.api.patch(f"{self.collection}/{self.name}", patch)
        except Conflict:
            return False
        return True

    def release(self) -> None:
        """Give the Lease up if this replica holds it, so that a standby need not wait for it to expire."""
        if not self.leading:
            return
        self.leading = False
        lease = self.api.get(f"{self.collection}/{self.name}")
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        released = {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_now()}
        try:
            self.api.patch(
                f"{self.collection}/{self.name}",
                {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": released},
            )
            log.info("Released Lease %s/%s", self.namespace, self.name)
        except Conflict:
            pass
