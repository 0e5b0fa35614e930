"""The TrainingJob reconciler: one Job per TrainingJob, followed to the end, its outcome in status."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pydantic import ValidationError

from regrow.api import InvalidSpec, TrainingJobSpec, parse_spec
from regrow.api.common import StorageSpec
from regrow.api.trainingjob import PromotionStatus, ValidationCheck
from regrow.controller import conditions
from regrow.controller.conditions import Cond
from regrow.controller.kube import Api, Conflict, Obj, path
from regrow.controller.result import Event, Result, transition_event
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.training import CONTAINER, training_job

log = logging.getLogger(__name__)

SUCCEEDED = "Succeeded"


def finished(body: Obj) -> bool:
    """Whether a TrainingJob reached its end for its current generation (then nothing is left to do)."""
    status = body.get("status") or {}
    cond = conditions.find(status.get("conditions") or [], SUCCEEDED)
    if cond is None or cond["status"] == "Unknown":
        return False
    return bool(cond["reason"] != "InvalidSpec" or cond.get("observedGeneration") == body["metadata"].get("generation"))


@dataclass(frozen=True)
class Outcome:
    cond: Cond
    report: Obj | None = None  # a successful run's
    validation: list[Obj] | None = None  # the dataset's checks, whatever the outcome


def last_message(pods: list[Obj]) -> str | None:
    """The termination message of the most recently finished trainer container, if any."""
    messages = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == CONTAINER and terminated and terminated.get("message"):
                messages.append((terminated.get("finishedAt") or "", terminated["message"]))
    return max(messages)[1] if messages else None


def parse_report(message: str | None) -> Obj | None:
    """The trainer's JSON report, or None when the message is something else (a log tail)."""
    try:
        report = json.loads(message or "")
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def outcome(job: Obj, pods: list[Obj]) -> Outcome:
    """The Succeeded condition that a Job and its pods imply."""
    status = job.get("status") or {}
    done = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    message = last_message(pods)
    if "Complete" in done:
        return _completed(parse_report(message))
    if "Failed" in done:
        return _failed(done["Failed"], message)
    if status.get("active"):
        return Outcome(Cond(SUCCEEDED, "Unknown", "Running", f"{status['active']} trainer pod(s) running"))
    return Outcome(Cond(SUCCEEDED, "Unknown", "Pending", "waiting for the trainer pod to start"))


def _completed(report: Obj | None) -> Outcome:
    if report is None or not report.get("succeeded"):
        return Outcome(Cond(SUCCEEDED, "False", "NoReport", "the trainer exited 0 without a report"))
    promotion = report.get("promotion") or {}
    version = report.get("version", "?")
    if promotion.get("outcome") == "Rejected":
        return Outcome(
            Cond(SUCCEEDED, "True", "GateRejected", f"version {version}: {promotion.get('message')}"), report
        )
    if promotion.get("outcome") == "Promoted":
        verb = "stays" if promotion.get("previousVersion") == version else "is now"
        message = f"version {version} {verb} {promotion.get('alias')}: {promotion.get('message')}"
        return Outcome(Cond(SUCCEEDED, "True", "Promoted", message), report)
    return Outcome(Cond(SUCCEEDED, "True", "Completed", f"published version {version}"), report)


def _failed(condition: Obj, message: str | None) -> Outcome:
    """A failed Job: the trainer's own reason when it reported one, else the Job's with the log tail."""
    report = parse_report(message)
    if report is not None and not report.get("succeeded") and report.get("reason"):
        cond = Cond(SUCCEEDED, "False", str(report["reason"]), str(report.get("message", "")))
        return Outcome(cond, validation=report.get("validation"))
    detail = condition.get("message") or ""
    if message:
        detail += f"; trainer said: {message.strip()[-1000:]}"
    return Outcome(Cond(SUCCEEDED, "False", condition.get("reason") or "Failed", detail))


def status_for(body: Obj, job: Obj | None, result: Outcome) -> Obj:
    status = conditions.status(body, [result.cond])
    if job is not None:
        status["jobName"] = job["metadata"]["name"]
        job_status = job.get("status") or {}
        status.update({k: job_status[k] for k in ("startTime", "completionTime") if job_status.get(k)})
    report = result.report
    if report is not None:
        status["artifact"] = {"uri": report["uri"], "version": report["version"], "metrics": report.get("metrics", {})}
        if report.get("promotion"):  # the trainer's report, through the one model of its promotion
            try:
                status["promotion"] = PromotionStatus.model_validate(report["promotion"]).to_wire()
            except ValidationError:
                log.warning("Ignored a promotion report that does not fit PromotionStatus")
    validation = result.validation or (report or {}).get("validation")
    if validation:
        try:
            checks = [ValidationCheck.model_validate(c) for c in validation]
            status["validation"] = [c.to_wire() for c in checks[:32]]
        except ValidationError:
            log.warning("Ignored validation checks that do not fit ValidationCheck")
    return status


def reconcile(body: Obj, api: Api, defaults: PodDefaults) -> Result:
    """Bring one TrainingJob one step closer to its end. Safe to call any number of times."""
    owner = Owner.of(body)
    previous = (body.get("status") or {}).get("conditions") or []
    try:
        spec = parse_spec(TrainingJobSpec, body.get("spec"))
        (spec.storage or StorageSpec()).check_file_uris(spec.dataset.uri, spec.output.registry)
        defaults.check_image(spec.image)
    except (InvalidSpec, ValueError) as error:
        cond = Cond(SUCCEEDED, "False", "InvalidSpec", str(error))
        return _result(body, None, Outcome(cond), previous)

    manifest = training_job(owner, spec, defaults)
    jobs = path("batch/v1", "jobs", owner.namespace)
    job = api.get(f"{jobs}/{manifest['metadata']['name']}")
    events = []
    if job is None:
        try:
            job = api.create(jobs, manifest)
            events.append(Event("Normal", "Created", f"Created Job {manifest['metadata']['name']}"))
        except Conflict:
            job = api.get(f"{jobs}/{manifest['metadata']['name']}")
    if job is None or not _owned_by(job, owner):
        cond = Cond(SUCCEEDED, "False", "JobConflict", f"Job {manifest['metadata']['name']} exists and is not ours")
        return _result(body, None, Outcome(cond), previous)

    pods = api.list(path("v1", "pods", owner.namespace), f"job-name={job['metadata']['name']}")
    result = _result(body, job, outcome(job, pods), previous)
    result.events[:0] = events
    return result


def _result(body: Obj, job: Obj | None, result: Outcome, previous: list[Obj]) -> Result:
    events = transition_event(previous, result.cond)
    # A promotion moved an alias: the ModelDeployments that follow it need not wait for their next poll.
    wake = ("modeldeployments",) if any(e.reason == "Promoted" for e in events) else ()
    return Result(status_for(body, job, result), events, wake)


def _owned_by(obj: Obj, owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj["metadata"].get("ownerReferences") or [])
