"""What a reconcile decides: the status to write and the Events to post."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from regrow.controller import conditions
from regrow.controller.conditions import Cond
from regrow.controller.kube import Obj


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: Obj = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    wake: tuple[str, ...] = ()  # kinds (plurals) of the same namespace to reconcile at once after this is written


class StatusMismatch(ValueError):
    """A reconciler's status that its kind's Status model refuses."""


def checked(model: type[BaseModel], status: Obj) -> Obj:
    """``status`` once it fits its kind's Status model (a None removes a field: the field then has its default,
    so it must have one). A key the model lacks, which the API server would prune without a word, or a value of
    another shape is a bug: raised here, not written."""
    optional = {field.alias or name for name, field in model.model_fields.items() if not field.is_required()}
    try:
        model.model_validate({key: value for key, value in status.items() if value is not None or key not in optional})
    except ValidationError as error:
        raise StatusMismatch(f"the status does not fit {model.__name__}: {error}") from None
    if empty := _empty_string(status):
        raise StatusMismatch(f"{model.__name__}: {empty} is an empty string, which the API server takes for null")
    return status


def _empty_string(value: object, where: str = "status") -> str | None:
    """Where ``value`` holds an empty string (the API server rejects one in a custom resource: "must be of type
    string: null"), or None."""
    if value == "":
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((found for key, item in items if (found := _empty_string(item, f"{where}.{key}"))), None)


def transition_event(previous: list[Obj], cond: Cond) -> list[Event]:
    """An Event when ``cond`` reaches a new True/False state (none for Unknown, none on a repeat)."""
    if cond.status == "Unknown" or not conditions.changed(previous, cond):
        return []
    return [Event("Normal" if cond.status == "True" else "Warning", cond.reason, cond.message)]
