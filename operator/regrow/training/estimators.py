"""The fixed list of algorithms as scikit-learn pipelines, and typed hyperparameters from the spec."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from regrow.api.trainingjob import Algorithm, ModelSpec

ESTIMATORS: dict[Algorithm, Callable[[], BaseEstimator]] = {
    Algorithm.LOGISTIC_REGRESSION: lambda: LogisticRegression(max_iter=1000),
    Algorithm.RANDOM_FOREST: lambda: RandomForestClassifier(n_estimators=100),
    Algorithm.GRADIENT_BOOSTING: GradientBoostingClassifier,
    Algorithm.RIDGE: Ridge,
    Algorithm.RANDOM_FOREST_REGRESSOR: lambda: RandomForestRegressor(n_estimators=100),
    Algorithm.GRADIENT_BOOSTING_REGRESSOR: GradientBoostingRegressor,
}
SCALED = frozenset({Algorithm.LOGISTIC_REGRESSION, Algorithm.RIDGE})
# Parameters that the spec may not set: they would change what the trainer controls or breaks export.
RESERVED = frozenset({"random_state", "n_jobs", "verbose", "warm_start"})


class ParamError(ValueError):
    pass


def coerce(value: int | str, default: Any) -> Any:
    """A spec value (int or string, never float) as the type the estimator expects."""
    if isinstance(value, int) or not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("None", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            raise ParamError(f"{value!r} is not a finite number")
        return float(number) if isinstance(default, float) else number
    return text


def build_pipeline(spec: ModelSpec, seed: int, categories: dict[str, list[str]] | None = None,
                   numeric: list[str] | None = None) -> Pipeline:  # fmt: skip
    """The estimator after its preparation: the median imputer (and a scaler for a linear model) on a float
    matrix, or, with ``categories`` (each categorical column's kept categories, by name), on a frame's
    ``numeric`` columns beside an encoder of the categorical ones, which skl2onnx converts exactly: one-hot for
    a linear model, ordinal codes for trees. The missing value ("") is a category of its own; one that is not
    kept (rarer, or never seen) is ignored by the one-hot encoder (all zeros) or coded -1, a group of its own."""
    estimator = ESTIMATORS[spec.algorithm]()
    known = estimator.get_params(deep=False)
    unknown = sorted(set(spec.params) - set(known) | set(spec.params) & RESERVED)
    if unknown:
        allowed = ", ".join(sorted(set(known) - RESERVED))
        raise ParamError(f"{spec.algorithm.value} does not take {', '.join(unknown)}; it takes: {allowed}")
    params = {name: coerce(value, known[name]) for name, value in spec.params.items()}
    if "random_state" in known:
        params["random_state"] = seed
    try:
        estimator.set_params(**params)
    except (TypeError, ValueError) as error:
        raise ParamError(f"{spec.algorithm.value}: {error}") from None
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if spec.algorithm in SCALED:
        steps.append(("scale", StandardScaler()))
    if not categories:
        return Pipeline([*steps, ("model", estimator)])
    known = [np.array([*kept, ""], dtype=object) for kept in categories.values()]
    encoder = (
        OneHotEncoder(categories=known, handle_unknown="ignore")
        if spec.algorithm in SCALED
        else OrdinalEncoder(categories=known, handle_unknown="use_encoded_value", unknown_value=-1)
    )
    parts: list[tuple[str, Any, list[str]]] = [("categories", encoder, list(categories))]
    if numeric:
        parts.append(("numbers", Pipeline(steps), numeric))
    return Pipeline([("prepare", ColumnTransformer(parts)), ("model", estimator)])
