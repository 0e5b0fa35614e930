"""kopf handlers: startup and cleanup of the control loop, and kopf's watch events into its cache."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, start_http_server

from regrow import API_VERSION, GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.contracts import ModelMetadata
from regrow.controller import canary, driftpolicy, keys, modeldeployment, outbound, trainingjob
from regrow.controller.cache import Cached, Informer, Resource, Store, owners
from regrow.controller.kube import Kube, Obj
from regrow.controller.lease import Lease, new_identity
from regrow.controller.loop import Controller, Kind
from regrow.controller.metrics import DriftCollector, Instruments, RolloutCollector
from regrow.manifests.common import PodDefaults

TRAINING_POLL_SECONDS = 5.0
RESYNC_SECONDS = 300.0  # what nothing else looks at again sooner (controller-runtime's SyncPeriod)
TJ = (GROUP, VERSION, TRAINING_JOB.plural)
MD = (GROUP, VERSION, MODEL_DEPLOYMENT.plural)
DP = (GROUP, VERSION, DRIFT_POLICY.plural)
REGROW_KINDS = (TRAINING_JOB, MODEL_DEPLOYMENT, DRIFT_POLICY)
LEASE_NAME = "regrow-operator"
API_QUIET_SECONDS = 10.0  # past this with no answer from the API server, the liveness probe asks it itself
PROBE_CALL_SECONDS = 4.0  # within the chart's probe timeout (5 s)
CONNECTIONS = 64  # kept open to the API server at most


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Clients, then the control loop. kopf only watches: it writes nothing to the objects (no finalizer,
    no bookkeeping annotations), and posts Events only about its own failures."""
    settings.posting.level = logging.WARNING
    # The CRDs come before the operator (Helm's crds/): no need to watch CRDs or namespaces, nor the
    # cluster-wide permissions that would take.
    settings.scanning.disabled = True
    if "kube" not in memo:
        memo.kube = Kube(_api_client())
    if "versions" not in memo:
        memo.versions = modeldeployment.discover(memo.kube)
    if "prober" not in memo:
        memo.prober = modeldeployment.http_prober
    if "fetch" not in memo:
        memo.fetch = outbound.pod_fetch
    if "min_check_seconds" not in memo:  # the chart's drift.minCheckSeconds
        memo.min_check_seconds = float(os.environ.get("REGROW_MIN_CHECK_SECONDS") or driftpolicy.MIN_CHECK_SECONDS)
    if "query" not in memo:  # the chart's drift.prometheusUrls, one a line
        memo.query = driftpolicy.allowing(os.environ.get("REGROW_PROMETHEUS_URLS", "").split())
    memo.drift_memory = driftpolicy.Memory()
    memo.resync = float(os.environ.get("REGROW_RESYNC_SECONDS") or RESYNC_SECONDS)
    if "pod_defaults" not in memo:
        memo.pod_defaults = PodDefaults(
            runtime=os.environ.get("REGROW_RUNTIME_IMAGE", PodDefaults.runtime),
            pull_policy=os.environ.get("REGROW_IMAGE_PULL_POLICY", PodDefaults.pull_policy),
            metrics_port=int(os.environ.get("REGROW_SERVING_METRICS_PORT") or PodDefaults.metrics_port),
            cluster_domain=os.environ.get("REGROW_CLUSTER_DOMAIN") or PodDefaults.cluster_domain,
            allowed_images=tuple(os.environ.get("REGROW_ALLOWED_IMAGES", "").split()),
            allowed_service_accounts=tuple(os.environ.get("REGROW_ALLOWED_SERVICE_ACCOUNTS", "").split()),
            allowed_tolerations=tuple(os.environ.get("REGROW_ALLOWED_TOLERATIONS", "").split()),
        )
    namespace = memo.get("lease_namespace")
    identity = memo.get("identity") or new_identity()
    lease = Lease(memo.kube, namespace, LEASE_NAME, identity) if namespace else None
    registry = CollectorRegistry()
    memo.stores = {Resource(group_version, plural): Store() for group_version, plural in owned(memo.versions)}
    for kind in REGROW_KINDS:  # filled by kopf's watch events from the start (see observe)
        memo.stores[Resource(API_VERSION, kind.plural)] = store = Store(complete=False)
        store.synced.set()
    memo.api = Cached(memo.kube, memo.stores)
    memo.instruments = Instruments(registry)
    memo.kube.sent = lambda verb, resource: memo.instruments.api_requests.labels(verb, resource).inc()
    memo.controller = Controller.of(memo.api, kinds(memo), lease, memo.instruments)
    memo.watching = threading.Event()
    _inform(memo, asyncio.get_running_loop())
    registry.register(DriftCollector(memo.controller.objects))
    registry.register(RolloutCollector(memo.controller.objects))
    if memo.get("metrics_port"):
        memo.metrics_server = start_http_server(memo.metrics_port, memo.get("metrics_address", "0.0.0.0"), registry)[0]
    memo.loop = asyncio.create_task(memo.controller.run())


def owned(versions: modeldeployment.ApiVersions) -> list[tuple[str, str]]:
    """What the operator makes and watches: its children, and the pods of its Deployments and Jobs."""
    return [("apps/v1", "deployments"), ("v1", "services"), (versions.hpa, "horizontalpodautoscalers"),
            (versions.pdb, "poddisruptionbudgets"), ("batch/v1", "jobs"), ("v1", "pods")]  # fmt: skip


def _inform(memo: kopf.Memo, loop: asyncio.AbstractEventLoop) -> None:
    """A thread per informer (per watched namespace, or one for all), each waking the owners of what changed."""
    plurals = {k.kind: k.plural for k in REGROW_KINDS}

    def changed(obj: Obj) -> None:
        loop.call_soon_threadsafe(memo.controller.poke, owners(obj, plurals))

    for resource, store in memo.stores.items():
        if resource.api_version.startswith(f"{GROUP}/"):
            continue  # kopf watches these, and observe() fills their stores
        for namespace in memo.get("watch_namespaces") or [None]:
            informer = Informer(memo.kube, resource, namespace, store, changed)
            name = f"watch-{resource.plural}" + (f"-{namespace}" if namespace else "")
            threading.Thread(target=informer.run, args=(memo.watching,), name=name, daemon=True).start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.watching.set()
    memo.loop.cancel()
    await memo.controller.stop()
    if memo.get("metrics_server"):
        memo.metrics_server.shutdown()


@kopf.on.probe(id="controlLoop")
async def alive(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return await liveness(memo.controller, memo.loop, memo.kube)


async def liveness(controller: Controller, loop: asyncio.Task[None], kube: Kube) -> dict[str, Any]:
    """The liveness endpoint's verdict: it fails (HTTP 500) only while the operator cannot work, that is while
    its control loop has ended or stalled, or while the API server does not answer (asked only when nothing
    else has had an answer for API_QUIET_SECONDS). kopf's own endpoint says nothing of the control loop. A
    standby replica is alive: it can take over. kopf runs this at most every 10 s, whatever the probe rate."""
    if loop.done() or controller.stalled():
        raise kopf.PermanentError("the control loop has stopped")
    if time.monotonic() - kube.answered_at > API_QUIET_SECONDS:
        try:
            await asyncio.wait_for(asyncio.to_thread(kube.get, "/version"), PROBE_CALL_SECONDS)
        except ApiException:
            pass  # it answered, if not what was asked
        except (TimeoutError, OSError) as error:
            raise kopf.PermanentError(f"the API server does not answer ({type(error).__name__})") from error
    leading = controller.lease is None or controller.lease.leading
    return {"leading": leading, "reconciling": len(controller.busy), "due": len(controller.due)}


def _api_client() -> client.ApiClient:
    """A client whose connection pool holds the informers' watches (a connection each, for minutes) and a
    connection for each worker besides."""
    settings = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=settings)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=settings)  # type: ignore[no-untyped-call]
    settings.connection_pool_maxsize = CONNECTIONS
    return client.ApiClient(settings)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def kinds(memo: kopf.Memo) -> list[Kind]:
    """The three kinds, each with its reconciler and how often its actual state is checked."""

    def probe(ip: str, model: str) -> ModelMetadata | None:
        memo.instruments.pod_probes.inc()
        answer: ModelMetadata | None = memo.prober(ip, model)
        return answer

    probes = modeldeployment.Probes(probe)
    serving = modeldeployment.Serving(memo.api, memo.pod_defaults, memo.versions, probes, memo.fetch, canary.Memory())
    return [
        Kind(
            TRAINING_JOB.kind,
            TRAINING_JOB.plural,
            lambda body: trainingjob.reconcile(body, memo.api, memo.pod_defaults),
            lambda body: None if trainingjob.finished(body) else TRAINING_POLL_SECONDS,
        ),
        Kind(
            MODEL_DEPLOYMENT.kind,
            MODEL_DEPLOYMENT.plural,
            lambda body: modeldeployment.reconcile(body, serving),
            lambda body: modeldeployment.next_check_in(body, memo.resync),
            lambda body: serving.forget(body["metadata"]["uid"]),
            (canary.DECISION_ANNOTATION, canary.RETRY_ANNOTATION, keys.ROTATE_ANNOTATION),
        ),
        Kind(
            DRIFT_POLICY.kind,
            DRIFT_POLICY.plural,
            lambda body: driftpolicy.reconcile(body, memo.api, memo.fetch, memo.drift_memory, memo.query),
            lambda body: driftpolicy.next_check_in(body, memo.min_check_seconds),
            memo.drift_memory.forget,
            (driftpolicy.APPROVE_ANNOTATION,),
        ),
    ]


@kopf.on.event(*TJ)
@kopf.on.event(*MD)
@kopf.on.event(*DP)
async def observe(event: kopf.RawEvent, resource: kopf.Resource, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event feeds the control loop's cache; the loop does the work. (Async, so that it runs
    in the loop's thread: kopf runs plain functions in a thread pool.)"""
    body = dict(event["object"])
    store = memo.stores[Resource(API_VERSION, resource.plural)]
    if event.get("type") == "DELETED":
        store.remove(body)
    else:
        store.put(body)
    memo.controller.observe(resource.plural, event.get("type"), body)
