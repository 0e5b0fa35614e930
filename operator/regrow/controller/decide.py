"""What a ModelDeployment's stable pods are to serve: one pure decision, from what is known of its alias.

The operator never reads the registry (it holds no store credentials). It learns where an alias points from
those who do: each serving pod reads it every ``refreshInterval`` and reports the version with the generation of
the alias record it read, and a TrainingJob that moved the alias records the generation it wrote. Every move
raises the generation by one, so of all these readings the one of the highest generation is the newest,
whoever read it and whenever: a pod that has not read the registry since a promotion, a pod that is still
starting, or a promotion long past never outvotes a newer reading, and the decision moves once per move of the
alias, never back unless the alias itself moved back. The newest reading is kept in ``status.alias``, so that it
stands while the pods that read it are replaced by pods that have not read it yet.

A writer that keeps no generation (a regrow older than generations, an edit by hand) leaves a record of generation
0, which no generation orders. For that, the pods have the last word: once every ready pod has read the registry
since the newest reading was known (each says how old its reading is) and they agree on another version, that
version wins. Pods that cannot read the registry keep their last reading, which then grows old: they never
outvote a newer one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from regrow.api.modeldeployment import ModelSource
from regrow.contracts import AliasReading, newest
from regrow.controller.kube import Obj


@dataclass(frozen=True)
class Desired:
    pin: str | None  # the version the stable pods' template pins (None: they resolve the alias themselves)
    target: str | None  # where the alias points as far as is known (None: not known): a canary's candidate
    alias: AliasReading | None  # the newest reading of the alias, to keep in status


def alias_ref(model: ModelSource) -> str | None:
    """The alias a ModelDeployment follows, as ``<registry>/<model>@<alias>`` (None: it pins a version)."""
    return f"{model.registry}/{model.name}@{model.alias}" if model.alias and not model.version else None


def promotions(trainingjobs: list[Obj], model: ModelSource) -> list[AliasReading]:
    """The alias as each TrainingJob that promoted to ``model``'s alias left it (one written before generations
    were recorded says nothing: its pods' readings will)."""
    found = []
    for tj in trainingjobs:
        output, status = (tj.get("spec") or {}).get("output") or {}, tj.get("status") or {}
        promotion, version = status.get("promotion") or {}, (status.get("artifact") or {}).get("version")
        ours = (output.get("registry"), output.get("modelName"), promotion.get("alias")) == (
            model.registry, model.name, model.alias
        )  # fmt: skip
        generation = promotion.get("generation")
        if ours and promotion.get("outcome") == "Promoted" and version and isinstance(generation, int):
            found.append(AliasReading(version=version, generation=generation))
    return found


def standing(recorded: AliasReading | None, readings: Iterable[AliasReading | None]) -> AliasReading | None:
    """The newest reading by generation: the recorded one, unless one of a higher generation names a version
    (alone at its generation)."""
    return newest(r for r in readings if r is not None and (recorded is None or r.generation > recorded.generation)) \
        or recorded  # fmt: skip


def decide(model: ModelSource, pinned: str | None, recorded: AliasReading | None,
           readings: Iterable[AliasReading | None], served: set[str], agreed: AliasReading | None = None
           ) -> Desired:  # fmt: skip
    """The version to pin and the canary's target.

    ``pinned``: what the stable Deployment's template pins now; ``recorded``: the newest reading the status kept;
    ``readings``: the pods' and the promotions'; ``served``: the versions its ready pods serve; ``agreed``: the
    reading every ready pod holds, each made after the newest reading was first known (None: not every one has
    read the registry since, or they disagree).

    The recorded reading stands until one of a higher generation comes (of several at that generation that name
    different versions, none: it is not known which). Ready pods that have all read the registry since, and agree
    on another version, win: a writer that keeps no generation (an older regrow, an edit by hand) moved the alias,
    and they have the store's word for it; they win at the highest generation known, so that no older reading
    outvotes them. A spec's version is pinned as it is. A template that pins nothing stays so while its ready pods
    serve nothing but the target (they resolved the alias themselves: pinning what they serve would roll them for
    nothing); otherwise the target is pinned, and with nothing known the template stays as it is."""
    if model.version:
        return Desired(model.version, model.version, None)
    known = [r for r in readings if r is not None]
    found = standing(recorded, known)
    if agreed is not None and (found is None or agreed.version != found.version):
        top = max([agreed.generation, *(r.generation for r in known), recorded.generation if recorded else 0])
        found = AliasReading(version=agreed.version, generation=top)
    if found is None:
        return Desired(pinned, None, None)
    keep_following = pinned is None and served <= {found.version}
    return Desired(None if keep_following else found.version, found.version, found)
