"""Types shared by the three kinds: the base model, conditions, references and value formats.

No floats appear in a spec (Kubernetes API conventions): thresholds are decimal strings, fractions are
decimal strings between 0 and 1, and durations are Go-style strings such as ``90s`` or ``1h30m``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, immutable once parsed."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in the Kubernetes API: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STORE_URI = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?|file:///[^\s]*)$"
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
FRACTION = r"^(0(\.[0-9]+)?|1(\.0+)?)$"
DURATION = r"^([0-9]+(h|m|s))+$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
INT_OR_PERCENT = r"^[0-9]+%?$"

Name = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
ObjectName = Annotated[str, StringConstraints(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
StoreUri = Annotated[
    str,
    StringConstraints(pattern=STORE_URI, max_length=2048),
    Field(description="s3://bucket/prefix (any S3-compatible store) or file:///absolute/path."),
]
DecimalString = Annotated[
    str, StringConstraints(pattern=DECIMAL, max_length=32), Field(description='A decimal such as "0.2".')
]
FractionString = Annotated[
    str,
    StringConstraints(pattern=FRACTION, max_length=32),
    Field(description='A fraction between 0 and 1, such as "0.5".'),
]
Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION, max_length=32),
    Field(description="A duration such as 30s, 10m or 1h30m."),
]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY)],
    Field(description="A Kubernetes quantity such as 500m, 2 or 1Gi."),
]
IntOrPercent = int | Annotated[str, StringConstraints(pattern=INT_OR_PERCENT)]

_DURATION_PART = re.compile(r"([0-9]+)(h|m|s)")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(value: str) -> int:
    """Seconds in a duration string that matched ``DURATION`` ("1h30m" -> 5400)."""
    if not re.fullmatch(DURATION, value):
        raise ValueError(f"invalid duration {value!r}: expected a form such as 30s, 10m or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def parse_decimal(value: str) -> Decimal:
    """A decimal string that matched ``DECIMAL`` or ``FRACTION`` as an exact Decimal."""
    return Decimal(value)


class Condition(ApiModel):
    """One observation of the object's state, in the shape of metav1.Condition."""

    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)]
    status: Literal["True", "False", "Unknown"]
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: Time
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        description="The latest observations of the object's state (metav1.Condition shape).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName


class ResourceRequirements(ApiModel):
    """Compute resources of a container, as in core/v1 ResourceRequirements."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class StorageSpec(ApiModel):
    """How pods reach the artifact store. S3 credentials come only from the referenced Secret, which
    holds AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN). file:// URIs
    live on the PersistentVolumeClaim named by volumeClaimName, mounted at mountPath."""

    endpoint_url: (
        Annotated[
            str,
            StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048),
            Field(description="Endpoint of an S3-compatible store; empty means AWS S3."),
        ]
        | None
    ) = None
    region: Annotated[str, StringConstraints(max_length=64)] | None = None
    secret_ref: LocalObjectReference | None = Field(
        default=None, description="Secret with the store's credentials, exposed to pods as environment."
    )
    volume_claim_name: ObjectName | None = Field(
        default=None, description="PersistentVolumeClaim that holds the file:// store and data sets."
    )
    mount_path: Annotated[str, StringConstraints(pattern=r"^(/[^\s/]+)+$", max_length=1024)] = Field(
        default="/var/lib/regrow", description="Where the claim is mounted; file:// URIs must lie under it."
    )

    @field_validator("mount_path")
    @classmethod
    def _no_dot_segments(cls, value: str) -> str:
        if {".", ".."} & set(value.split("/")):
            raise ValueError("storage.mountPath may not contain . or .. segments")
        return value

    def check_file_uris(self, *uris: str) -> None:
        """Raise if a file:// URI cannot be reached by pods with this storage."""
        for uri in uris:
            if not uri.startswith("file://"):
                continue
            if self.volume_claim_name is None:
                raise ValueError(f"{uri}: a file:// URI needs storage.volumeClaimName so that pods can reach it")
            if {".", ".."} & set(uri[len("file://") :].split("/")):
                raise ValueError(f"{uri}: a file:// URI may not contain . or .. segments")
            if not (uri[len("file://") :] + "/").startswith(self.mount_path + "/"):
                raise ValueError(f"{uri}: a file:// URI must lie under storage.mountPath ({self.mount_path})")
