"""Data sets that ship with scikit-learn (and palmerpenguins), written as the CSV files the examples train on."""

from __future__ import annotations

import re

import numpy as np
from sklearn import datasets

LOADERS = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "diabetes": datasets.load_diabetes,
}
TARGETS = {"iris": "species", "wine": "cultivar", "breast_cancer": "diagnosis", "diabetes": "progression"}


def sample_csv(name: str) -> bytes:
    """A data set as CSV: snake_case feature columns, and the target last, by class name where it has one.
    ``penguins`` (palmerpenguins: the island and sex are categories, some values are missing) has the species
    last, and no year."""
    if name == "penguins":
        from palmerpenguins import load_penguins  # noqa: PLC0415 - only for this set

        frame = load_penguins().drop(columns=["year"])
        return str(frame[[*(c for c in frame.columns if c != "species"), "species"]].to_csv(index=False)).encode()
    bunch = LOADERS[name](as_frame=True)
    frame = bunch.frame.rename(
        columns=lambda c: re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", str(c).lower())).strip("_")
    )
    target = frame.pop("target")
    names = getattr(bunch, "target_names", None)
    frame[TARGETS[name]] = np.asarray(names)[target] if names is not None else target
    return str(frame.to_csv(index=False)).encode()
