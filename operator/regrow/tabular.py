"""Categorical values in their one canonical form, wherever they come from (a CSV, a parquet file, a JSON
request, a binary BYTES tensor): a string, the empty string being a missing value.

- text stays as it is (``"Biscoe"``); an empty string, ``None``, ``null`` and NaN are missing (``""``);
- booleans become ``"true"`` and ``"false"``;
- integers, and floats that are whole numbers, become their decimal digits (``3``, ``3.0`` and ``"3"`` are
  one category); other floats their shortest round-trip text (``2.5``);
- bytes are decoded as UTF-8 (a binary BYTES tensor's elements);
- a value of more than MAX_CATEGORY_CHARS characters is no category: refused, in a request (400) as in a data
  set, so that the model and the drift bins never see one the other could not.

The trainer, the server and the backtests all go through ``canonical``, so a value lands in the same
category in the model, in the drift bins and in the prediction log.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

MISSING = ""
MAX_CATEGORY_CHARS = 1024


class NotCategorical(ValueError):
    """A value that cannot be a category (a list, an object, an infinite number)."""


def _number(value: float) -> str:
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        raise NotCategorical("an infinite number")
    return str(int(value)) if value.is_integer() else repr(value)


def _one(value: Any) -> str:
    text = _text(value)
    if len(text) > MAX_CATEGORY_CHARS:
        raise NotCategorical(f"a category longer than {MAX_CATEGORY_CHARS} characters")
    return text


def _text(value: Any) -> str:
    if value is None:
        return MISSING
    if type(value) is str:
        return value
    if type(value) is bool or type(value) is np.bool_:
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _number(float(value))
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise NotCategorical("bytes that are not UTF-8") from None
    raise NotCategorical(f"a {type(value).__name__}")


_CANONICAL = np.frompyfunc(_one, 1, 1)


def canonical(values: Any) -> npt.NDArray[np.object_]:
    """``values`` (any shape) as canonical category strings, an object array of ``str`` of the same shape;
    NotCategorical for a value that cannot be one."""
    array = np.asarray(values, dtype=object)
    return np.asarray(_CANONICAL(array), dtype=object) if array.size else array.astype(object)


def missing(x: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Where a table's values are missing: NaN in a float matrix; in an object table (canonical categories
    beside floats), the empty category or NaN."""
    if x.dtype != object:
        return np.asarray(np.isnan(x), dtype=bool)
    nan = x != x  # noqa: PLR0124 - NaN is the one value unequal to itself
    return np.asarray((x == MISSING) | nan, dtype=bool)
