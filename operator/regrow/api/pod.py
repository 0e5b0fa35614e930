"""Where and how the pods of a TrainingJob or ModelDeployment run on a real cluster: ``spec.pod``.

The fields are core/v1 PodSpec's, typed as Kubernetes types them, so that a mistake is refused when the object is
applied, not when its pods are made. Two of them reach past the namespace, so the operator allows them only as its
chart says (``allowedServiceAccounts``, ``allowedTolerations``; see ``PodDefaults.check_pod``): a service account
can carry cloud credentials (IRSA, workload identity) and tolerations reach tainted, dedicated nodes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from regrow.api.common import ApiModel, LocalObjectReference, Name, ObjectName

_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
QUALIFIED = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$"
LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=rf"^{_NAME}?$", max_length=63)]
RESERVED = ("regrow.dev/", "app.kubernetes.io/")  # the operator's own labels: selectors and owners
RESERVED_ANNOTATIONS = ("regrow.dev/", "prometheus.io/")  # the operator's own annotations on serving pods
CONFINEMENT = (  # annotations that set a pod's AppArmor or seccomp profile: "unconfined" would lift them
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)
Values = Annotated[list[Annotated[str, StringConstraints(max_length=253)]], Field(max_length=64)]


class LabelSelectorRequirement(ApiModel):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Values = Field(default_factory=list)


class LabelSelector(ApiModel):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)


class NodeSelectorRequirement(ApiModel):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: Values = Field(default_factory=list)


class NodeSelectorTerm(ApiModel):
    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=16)
    match_fields: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=16)


class NodeSelector(ApiModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=16)


class PreferredSchedulingTerm(ApiModel):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16
    )


class PodAffinityTerm(ApiModel):
    label_selector: LabelSelector | None = None
    namespaces: list[Name] = Field(default_factory=list, max_length=16)
    topology_key: LabelKey


class WeightedPodAffinityTerm(ApiModel):
    weight: int = Field(ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAffinity(ApiModel):
    """podAffinity or podAntiAffinity."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=16
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=16
    )


class Affinity(ApiModel):
    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


class Toleration(ApiModel):
    key: LabelKey | None = Field(default=None, description="The taint's key; unset with Exists: every taint.")
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _operator_fits(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists has no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must have operator Exists")
        return self


class TopologySpreadConstraint(ApiModel):
    max_skew: int = Field(ge=1)
    topology_key: LabelKey
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: LabelSelector | None = Field(
        default=None, description="Unset: the pods of this TrainingJob or ModelDeployment (and track)."
    )


class PodOptions(ApiModel):
    """Scheduling, identity and metadata of the pods, as in a core/v1 PodSpec."""

    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Each taint key must be in the chart's allowedTolerations."
    )
    affinity: Affinity | None = None
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(default_factory=list, max_length=8)
    priority_class_name: ObjectName | None = None
    service_account_name: ObjectName | None = Field(
        default=None,
        description="Run as this service account, with its token mounted (for IRSA or workload identity instead of "
        "a Secret's keys); it must be in the chart's allowedServiceAccounts. Unset: the namespace's default "
        "account, with no token mounted.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=8)
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Added to the pods' labels; keys under regrow.dev/ and app.kubernetes.io/ "
        "are the operator's."
    )  # fmt: skip
    annotations: dict[LabelKey, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, description="Added to the pods' annotations; keys under regrow.dev/ and prometheus.io/ "
        "are the operator's, and none may set the pods' AppArmor or seccomp profile (the pods run RuntimeDefault)."
    )  # fmt: skip

    @model_validator(mode="after")
    def _not_the_operators(self) -> PodOptions:
        taken = [k for k in self.labels if k.startswith(RESERVED)]
        taken += [k for k in self.annotations if k.startswith(RESERVED_ANNOTATIONS)]
        if taken:
            raise ValueError(f"pod.labels and pod.annotations may not set the operator's own keys: {', '.join(taken)}")
        unconfining = ", ".join(k for k in self.annotations if k.startswith(CONFINEMENT))
        if unconfining:
            raise ValueError(f"pod.annotations may not set the pods' AppArmor or seccomp profile: {unconfining}")
        return self

    def template(self) -> dict[str, Any]:
        """The fields set, as in a pod template's spec (a service account's token mounted with it)."""
        spec = self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_defaults=True, exclude={"labels", "annotations"}
        )
        if self.service_account_name:
            spec["automountServiceAccountToken"] = True
        return spec
