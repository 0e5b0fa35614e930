"""Time as the Kubernetes API writes it."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """The current time in RFC 3339, UTC, to the second (metav1.Time)."""
    return stamp(datetime.now(UTC))


def stamp(at: datetime) -> str:
    """``at`` (in UTC) as metav1.Time."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
