"""`regrow status <md>`: what a ModelDeployment serves and how it got there, from the objects' status alone.

The version ← the TrainingJob that published it (its metric and its gate) ← the drift check that started that
retrain (recorded on the TrainingJob by its DriftPolicy); then the last canary, step by step with its gates,
and the versions rolled back. Nothing here is kept anywhere else: the same facts are in the statuses.
"""

from __future__ import annotations

import json
from typing import Any

from regrow import GROUP
from regrow.controller.conditions import find

Obj = dict[str, Any]


def _gates(gates: list[Obj]) -> str:
    marks = {True: "passed", False: "FAILED", None: "not measured"}
    return ", ".join(f"{g['name']} {g.get('value', '-')} (max {g['threshold']}, {marks[g.get('passed')]})"
                     for g in gates) or "no gate measured"  # fmt: skip


def _made_by(version: str, trainingjobs: list[Obj]) -> list[str]:
    made = [tj for tj in trainingjobs if ((tj.get("status") or {}).get("artifact") or {}).get("version") == version]
    if not made:
        return ["  made by no TrainingJob of this namespace"]
    tj = max(made, key=lambda t: (t.get("status") or {}).get("completionTime") or "")
    status, meta = tj.get("status") or {}, tj["metadata"]
    metrics = ", ".join(f"{k} {v}" for k, v in ((status.get("artifact") or {}).get("metrics") or {}).items())
    promotion = status.get("promotion") or {}
    gate = f"; {promotion['outcome']}: {promotion.get('message', '')}" if promotion else ""
    lines = [f"  made by TrainingJob {meta['name']} at {status.get('completionTime', '?')}: {metrics}{gate}"]
    check = (meta.get("annotations") or {}).get(f"{GROUP}/drift-check")
    policy = (meta.get("labels") or {}).get(f"{GROUP}/driftpolicy")
    if check and policy:
        found = json.loads(check)
        drifted = "; ".join(f"{name} " + " ".join(f"{test}={score}" for test, score in scores.items())
                            for name, scores in (found.get("drifted") or {}).items())  # fmt: skip
        lines.append(f"  after DriftPolicy {policy}'s check at {found.get('time')} of {found.get('version')}: "
                     f"{found.get('samples')} samples, {found.get('driftedFeatures')} features drifted"
                     + (f" ({drifted})" if drifted else ""))  # fmt: skip
    return lines


def _at(step: Obj) -> str:
    return f"shadowing {step['mirror']}%" if step.get("mirror") else f"at {step['weight']}%"


def _requests(step: Obj) -> str:
    mirrored = f" of {step.get('mirrored', 0)} mirrored" if step.get("mirror") else ""
    return f"{step.get('requests', 0)}{mirrored} requests"


def _rollout(rollout: Obj) -> list[str]:
    state = rollout.get("outcome") or f"at step {rollout['step']}, {_at(rollout)}"
    when = f" at {rollout['finished']}" if rollout.get("finished") else ""
    lines = [f"last canary: {rollout['candidate']} beside {rollout['stable']}, started {rollout['started']}: "
             f"{state}{when} ({rollout.get('message', '')})"]  # fmt: skip
    for step in rollout.get("passed") or []:
        lines.append(f"  step {step['step']} {_at(step)}, passed {step['passed']} after {_requests(step)}: "
                     f"{_gates(step.get('gates') or [])}")  # fmt: skip
    if not rollout.get("outcome") or rollout["outcome"] == "RolledBack":
        lines.append(f"  step {rollout['step']} {_at(rollout)} with {_requests(rollout)}: "
                     f"{_gates(rollout.get('gates') or [])}")  # fmt: skip
    decision = rollout.get("decision")
    if decision:
        lines.append(
            f"  {decision['action']} by {decision['actor']} at {decision['time']}: {decision.get('reason', '')}"
        )
    return lines


def lineage(md: Obj, trainingjobs: list[Obj]) -> list[str]:
    """The lines `regrow status` prints for ``md``, given the TrainingJobs of its namespace."""
    meta, status = md["metadata"], md.get("status") or {}
    ready = find(status.get("conditions") or [], "Ready") or {}
    lines = [f"ModelDeployment {meta['namespace']}/{meta['name']}: Ready={ready.get('status', 'Unknown')} "
             f"({ready.get('reason', 'not observed yet')}: {ready.get('message', '')})"]  # fmt: skip
    model, alias, leaving = status.get("model") or {}, status.get("alias") or {}, status.get("terminatingReplicas")
    if model:
        shutting = f" ({leaving} old pod(s) still shutting down)" if leaving else ""
        lines.append(f"serves {model['version']} from {model['uri']}{shutting}")
        lines += _made_by(model["version"], trainingjobs)
    else:
        lines.append("serves no version yet")
    if alias:
        lines.append(f"{alias['ref']} points at {alias['version']} (generation {alias['generation']}, as last read)")
    if status.get("rollout"):
        lines += _rollout(status["rollout"])
    if status.get("rejectedVersions"):
        lines.append(f"rolled back, not tried again: {', '.join(status['rejectedVersions'])}")
    return lines
