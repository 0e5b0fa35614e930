"""The Validation stage: a dataset's checks before anything is trained on it.

A contract taken from the alias's current model (its metadata and reference profile) comes first: the same
feature columns, the same task and kind of labels, no label it does not know. Missing values and value
ranges are compared with its training data and reported: a drift retrain is meant to see moved data, so
they fail only through the spec's rules (``dataset.validation``).

Messages give counts and the names the spec or the current model gave; a column the file alone names is
given by its position, and no cell is ever quoted (the URI may reach a file it should not).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.api.trainingjob import Task, TrainingJobSpec, ValidationCheck
from regrow.drift.profile import Profile, tally
from regrow.tabular import missing as blank
from regrow.training.feedback import label_kind, plain

MESSAGE_CHARS = 240  # the report, checks included, must fit a termination message (4 KiB)


@dataclass(frozen=True)
class Contract:
    """What the current model was trained on: from its metadata.json and profile.json."""

    version: str
    features: list[str]
    task: str
    classes: list[Any]
    label_shares: dict[str, float] | None  # by class as text; None for models trained before it was recorded
    profile: Profile


@dataclass(frozen=True)
class Table:
    """The dataset as validation sees it: the file's columns, and the features and labels taken from it."""

    columns: list[str]
    features: list[str]
    x: npt.NDArray[Any]  # floats, or canonical categories beside floats
    y: npt.NDArray[Any]


def label_shares(y: npt.NDArray[Any]) -> dict[str, float]:
    """Each class's share of the rows, by its label as text."""
    counts = Counter(str(plain(v)) for v in y)
    return {label: count / len(y) for label, count in sorted(counts.items())} if len(y) else {}


def columns_named(names: list[str], columns: list[str], known: set[str]) -> str:
    """Columns for a message: by name where the spec or the current model named them (``known``), else by
    position in the file's ``columns``. A name only the file gives is its content, which a message must not
    echo: the URI may reach a file it should not."""
    return ", ".join(repr(name) if name in known else f"column {columns.index(name) + 1}" for name in names[:10])


def _named(spec: TrainingJobSpec, contract: Contract | None, table: Table, indices: list[int]) -> str:
    """Features, by their indices, as ``columns_named`` says them."""
    known = set(spec.dataset.features or []) | set(contract.features if contract else [])
    return columns_named([table.features[j] for j in indices], table.columns, known)


def _check(name: str, passed: bool, message: str) -> ValidationCheck:
    return ValidationCheck(check=name, passed=passed, message=message[:MESSAGE_CHARS])


def validate(spec: TrainingJobSpec, table: Table, contract: Contract | None) -> list[ValidationCheck]:
    """Every check's verdict, in order: the contract, then the spec's rules, then what is only reported."""
    rules, task = spec.dataset.validation, spec.model.algorithm.task
    enforce = rules.contract == "Enforce"
    out = _contract(table, contract, task, enforce) if contract is not None else []
    rows = len(table.y)
    if rules.min_rows is not None:
        out.append(_check("minRows", rows >= rules.min_rows, f"{rows} labelled rows; at least {rules.min_rows} asked"))
    if rules.required_columns:
        absent = [c for c in rules.required_columns if c not in table.columns]
        out.append(_check("requiredColumns", not absent,
                          f"missing: {', '.join(map(repr, absent))}" if absent else "all present"))  # fmt: skip
    missing = blank(table.x).mean(axis=0) * 100 if rows else np.zeros(len(table.features))
    if rules.max_missing_percent is not None:
        over = [j for j in np.argsort(-missing) if missing[j] > rules.max_missing_percent]
        message = f"most missing: {missing.max(initial=0):.1f}% of rows; at most {rules.max_missing_percent}% asked"
        if over:
            message += f"; over it: {_named(spec, contract, table, over)}"
        out.append(_check("maxMissingPercent", not over, message))
    if task is Task.CLASSIFICATION:
        out += _label_rules(spec, table, contract)
    if contract is not None:
        out += _moved(spec, table, contract, missing)
    return out


def _contract(table: Table, contract: Contract, task: Task, enforce: bool) -> list[ValidationCheck]:
    out = []
    lacking = [f for f in contract.features if f not in table.features]
    added = len([f for f in table.features if f not in contract.features])
    same = table.features == contract.features
    message = f"the {len(contract.features)} feature columns of {contract.version}"
    if not same:
        message = f"{len(lacking)} of {contract.version}'s {len(contract.features)} feature columns missing"
        message += f" ({', '.join(map(repr, lacking[:10]))})" if lacking else ""
        message += f", {added} column(s) it does not take" if added else ""
        message += ", another order" if not lacking and not added else ""
    out.append(_check("columns", same or not enforce, message))
    kinds = {label_kind(c) for c in contract.classes}
    found = {label_kind(v) for v in table.y}
    same_task = contract.task == task.value and (task is Task.REGRESSION or found <= kinds)
    out.append(_check("types", same_task or not enforce,
                      f"{task.value} with labels of kind {', '.join(sorted(str(k) for k in found))}; "
                      f"{contract.version}: {contract.task}"))  # fmt: skip
    if task is Task.CLASSIFICATION and contract.task == task.value:
        known = {str(c) for c in contract.classes}
        shares = label_shares(table.y)
        unknown = [label for label in shares if label not in known]
        rows = round(sum(shares[label] for label in unknown) * len(table.y))
        absent = len(known - set(shares))
        message = f"{len(unknown)} label(s) {contract.version} does not know, on {rows} rows" if unknown else "known"
        message += f"; {absent} of its {len(known)} classes absent" if absent else ""
        out.append(_check("labels", not unknown or not enforce, message))
    return out


def _label_rules(spec: TrainingJobSpec, table: Table, contract: Contract | None) -> list[ValidationCheck]:
    rules, out = spec.dataset.validation, []
    shares = label_shares(table.y)
    if rules.allowed_labels is not None:
        outside = [label for label in shares if label not in rules.allowed_labels]
        rows = round(sum(shares[label] for label in outside) * len(table.y))
        out.append(_check("allowedLabels", not outside,
                          f"{rows} rows carry {len(outside)} label(s) outside allowedLabels" if outside
                          else "every label allowed"))  # fmt: skip
    if rules.max_label_shift_percent is not None:
        before = contract.label_shares if contract is not None else None
        if before is None:
            out.append(_check("maxLabelShiftPercent", True, "no label shares recorded for the current model"))
        else:
            # Classes by the current model's names (labels it does not know are the labels check's business).
            moves = {c: abs(shares.get(c, 0.0) - share) * 100 for c, share in before.items()}
            worst = max(moves, key=lambda c: moves[c], default=None)
            moved = moves.get(worst, 0.0) if worst is not None else 0.0
            message = f"the largest move: {moved:.1f} points" + (f" ({worst!r})" if worst is not None else "")
            passed = moved <= rules.max_label_shift_percent
            out.append(_check("maxLabelShiftPercent", passed, f"{message}; at most {rules.max_label_shift_percent}"))
    return out


def _moved(
    spec: TrainingJobSpec, table: Table, contract: Contract, missing: npt.NDArray[np.float64]
) -> list[ValidationCheck]:
    """Reported only: missing values and ranges against the current model's training data."""
    profile, out = contract.profile, list[ValidationCheck]()
    shared = [j for j, f in enumerate(table.features) if f in profile.names]
    if not shared:
        return out
    before = np.array([_missing_share(profile, table.features[j]) * 100 for j in shared])
    change = missing[shared] - before
    j = int(np.argmax(np.abs(change)))
    out.append(_check("missingValues", True, f"the largest change: {change[j]:+.1f} points of missing values "
                      f"({_named(spec, contract, table, [shared[j]])})"))  # fmt: skip
    outside = np.array([_outside(profile, table.features[j], table.x[:, j]) * 100 for j in shared])
    k = int(np.argmax(outside))
    beyond = int((outside > 0).sum())
    where = _named(spec, contract, table, [shared[k]])
    message = f"{beyond} feature(s) with values outside the current model's training range"
    out.append(_check("ranges", True, f"{message}; the most: {outside[k]:.1f}% of rows ({where})"))
    return out


def _missing_share(profile: Profile, name: str) -> float:
    feature = profile.features[profile.names.index(name)]
    return feature.counts[-1] / max(sum(feature.counts), 1)


def _outside(profile: Profile, name: str, column: npt.NDArray[Any]) -> float:
    """The share of present values outside the training range: of a categorical column, not among the
    categories the current model's profile kept."""
    feature = profile.features[profile.names.index(name)]
    present = column[~blank(column)]
    if not present.size:
        return 0.0
    if not feature.numeric:
        distinct, counts = tally(present)
        known = np.fromiter((v in feature.categories for v in distinct), dtype=bool, count=len(distinct))
        return float(counts[~known].sum() / counts.sum())
    values = present.astype(np.float64)
    return float(((values < feature.edges[0]) | (values > feature.edges[-1])).mean())
