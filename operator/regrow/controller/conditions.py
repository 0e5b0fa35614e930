"""metav1.Condition bookkeeping: lastTransitionTime moves only when a condition's status flips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from regrow.clock import now

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    type: str
    status: Status
    reason: str
    message: str = ""


def status(body: dict[str, Any], updates: list[Cond], **fields: Any) -> dict[str, Any]:
    """A status for ``body`` now: its generation observed, its conditions updated, and ``fields``."""
    generation = body["metadata"].get("generation", 1)
    previous = (body.get("status") or {}).get("conditions") or []
    return {"observedGeneration": generation, "conditions": merge(previous, updates, generation, now()), **fields}


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def merge(previous: list[dict[str, Any]], updates: list[Cond], generation: int, at: str) -> list[dict[str, Any]]:
    """The full conditions list after ``updates``; others are kept as they were, in their order."""
    out = [dict(c) for c in previous]
    for update in updates:
        old = find(out, update.type)
        entry = {
            "type": update.type,
            "status": update.status,
            "observedGeneration": generation,
            "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == update.status else at,
            "reason": update.reason,
            "message": update.message[:32768],
        }
        if old is None:
            out.append(entry)
        else:
            out[out.index(old)] = entry
    return out


def changed(previous: list[dict[str, Any]], update: Cond) -> bool:
    """Whether ``update`` differs in status or reason from the current condition of its type."""
    old = find(previous, update.type)
    return old is None or (old.get("status"), old.get("reason")) != (update.status, update.reason)
