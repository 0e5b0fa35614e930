"""kopf handlers: thin adapters from kopf's events to the level-based reconcilers."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
from kubernetes import client, config

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.controller import driftpolicy, modeldeployment, trainingjob
from regrow.controller.kube import Kube
from regrow.controller.result import Result
from regrow.manifests.common import Images

TRAINING_POLL_SECONDS = 5.0
SERVING_POLL_SECONDS = 5.0
TJ = (GROUP, VERSION, TRAINING_JOB.plural)
MD = (GROUP, VERSION, MODEL_DEPLOYMENT.plural)
DP = (GROUP, VERSION, DRIFT_POLICY.plural)
DRIFT_TICK_SECONDS = 1.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's bookkeeping in annotations prefixed with our group; Events only for what we post ourselves."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    if "kube" not in memo:
        memo.kube = Kube(_api_client())
    if "versions" not in memo:
        memo.versions = modeldeployment.discover(memo.kube)
    if "prober" not in memo:
        memo.prober = modeldeployment.http_prober
    if "fetch" not in memo:
        memo.fetch = driftpolicy.http_fetch
    memo.drift_memory = driftpolicy.Memory()
    if "images" not in memo:
        memo.images = Images(
            runtime=os.environ.get("REGROW_RUNTIME_IMAGE", Images.runtime),
            pull_policy=os.environ.get("REGROW_IMAGE_PULL_POLICY", Images.pull_policy),
        )


def _api_client() -> client.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    api_client: client.ApiClient = config.new_client_from_config()  # type: ignore[no-untyped-call]
    return api_client


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _apply(result: Result, body: kopf.Body, patch: kopf.Patch) -> None:
    patch.status.update(result.status)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.resume(*TJ)
@kopf.on.create(*TJ)
@kopf.on.update(*TJ, field="spec")
async def training_job_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_training_job(body, patch, memo)


@kopf.timer(*TJ, interval=TRAINING_POLL_SECONDS, when=lambda body, **_: not trainingjob.finished(dict(body)))
async def training_job_progress(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_training_job(body, patch, memo)


async def _reconcile_training_job(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    if trainingjob.finished(dict(body)):
        return
    result = await asyncio.to_thread(trainingjob.reconcile, dict(body), memo.kube, memo.images)
    _apply(result, body, patch)


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD, field="spec")
async def model_deployment_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_model_deployment(body, patch, memo)


@kopf.timer(*MD, interval=SERVING_POLL_SECONDS)
async def model_deployment_watch(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Pods crash, aliases move: the actual state is watched, not only the spec."""
    await _reconcile_model_deployment(body, patch, memo)


async def _reconcile_model_deployment(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    result = await asyncio.to_thread(
        modeldeployment.reconcile, dict(body), memo.kube, memo.images, memo.versions, memo.prober
    )
    _apply(result, body, patch)


@kopf.timer(*DP, interval=DRIFT_TICK_SECONDS)
async def drift_policy_check(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """One check per ``spec.interval``: the timer ticks every second and acts when a check is due. (Not a
    ``when=`` filter: kopf evaluates those on watch events only, and would stop the timer after a check.)"""
    if not driftpolicy.due(dict(body)):
        return
    result = await asyncio.to_thread(driftpolicy.reconcile, dict(body), memo.kube, memo.fetch, memo.drift_memory)
    _apply(result, body, patch)
