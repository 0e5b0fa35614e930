"""The TrainingJob reconciler: one Job per TrainingJob, followed to the end, its outcome in status."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from regrow.api import InvalidSpec, TrainingJobSpec, parse_spec
from regrow.api.common import StorageSpec
from regrow.api.trainingjob import ArtifactStatus, LiveRows, PromotionStatus, TrainingJobStatus, ValidationCheck
from regrow.contracts import TrainerReport
from regrow.controller import conditions
from regrow.controller.conditions import Cond
from regrow.controller.kube import Api, Conflict, Obj, path
from regrow.controller.result import Event, Result, checked, transition_event
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.training import CONTAINER, training_job

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
    artifact: ArtifactStatus | None = None  # a successful run's
    promotion: PromotionStatus | None = None  # the gate's decision on it
    validation: list[ValidationCheck] | None = None  # the dataset's checks, whatever the outcome
    feedback: LiveRows | None = None  # the labelled live traffic a successful run read


def last_message(pods: list[Obj]) -> str | None:
    """The termination message of the most recently finished trainer container, if any."""
    messages = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == CONTAINER and terminated and terminated.get("message"):
                messages.append((terminated.get("finishedAt") or "", terminated["message"]))
    return max(messages)[1] if messages else None


def parse_report(message: str | None) -> TrainerReport | None:
    """The trainer's report, or None when the message is something else (a log tail, or a report this version
    of regrow cannot read)."""
    try:
        return TrainerReport.model_validate_json(message or "")
    except ValidationError:
        return None


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


def _completed(report: TrainerReport | None) -> Outcome:
    if report is None or not report.succeeded or report.uri is None or report.version is None:
        return Outcome(
            Cond(SUCCEEDED, "False", "NoReport", "the trainer exited 0 without a report this operator can read")
        )
    promotion, version = report.promotion, report.version
    if promotion is not None and promotion.outcome == "Rejected":
        cond = Cond(SUCCEEDED, "True", "GateRejected", f"version {version}: {promotion.message}")
    elif promotion is not None and promotion.outcome == "Promoted":
        verb = "stays" if promotion.previous_version == version else "is now"
        cond = Cond(SUCCEEDED, "True", "Promoted", f"version {version} {verb} {promotion.alias}: {promotion.message}")
    else:
        cond = Cond(SUCCEEDED, "True", "Completed", f"published version {version}")
    artifact = ArtifactStatus(uri=report.uri, version=version, metrics=report.metrics)
    return Outcome(cond, artifact, promotion, report.validation, report.feedback)


def _failed(condition: Obj, message: str | None) -> Outcome:
    """A failed Job: the trainer's own reason when it reported one, else the Job's with the log tail."""
    report = parse_report(message)
    if report is not None and not report.succeeded and report.reason:
        message = report.message or f"the trainer failed: {report.reason}"
        return Outcome(Cond(SUCCEEDED, "False", report.reason, message), validation=report.validation)
    detail = condition.get("message") or "the Job failed"
    if message:
        detail += f"; trainer said: {message.strip()[-1000:]}"
    return Outcome(Cond(SUCCEEDED, "False", condition.get("reason") or "Failed", detail))


def status_for(body: Obj, job: Obj | None, result: Outcome) -> Obj:
    status = conditions.status(body, [result.cond])
    if job is not None:
        status["jobName"] = job["metadata"]["name"]
        job_status = job.get("status") or {}
        status.update({k: job_status[k] for k in ("startTime", "completionTime") if job_status.get(k)})
    if result.artifact is not None:
        status["artifact"] = result.artifact.to_wire()
    if result.promotion is not None:
        status["promotion"] = result.promotion.to_wire()
    if result.validation:
        status["validation"] = [c.to_wire() for c in result.validation[:32]]
    if result.feedback is not None:
        status["feedback"] = result.feedback.to_wire()
    return status


def reconcile(body: Obj, api: Api, defaults: PodDefaults) -> Result:
    """Bring one TrainingJob one step closer to its end. Safe to call any number of times."""
    owner = Owner.of(body)
    previous = (body.get("status") or {}).get("conditions") or []
    try:
        spec = parse_spec(TrainingJobSpec, body.get("spec"))
        (spec.storage or StorageSpec()).check_file_uris(spec.dataset.uri, spec.output.registry)
        defaults.check_image(spec.image)
        defaults.check_pod(spec.pod, owner.namespace)
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
    return Result(checked(TrainingJobStatus, status_for(body, job, result)), events, wake)


def _owned_by(obj: Obj, owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj["metadata"].get("ownerReferences") or [])
