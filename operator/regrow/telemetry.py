"""What serving pods export and the operator reads back, in one place so that the two cannot disagree."""

from __future__ import annotations

from typing import Literal

# regrow_inference_request_duration_seconds' bucket bounds (+Inf follows), which the canary's p99 is read from.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SHED = 429  # load shedding: neither an answer nor an error of the version (the server was busy)
# Why an inference request was refused, the label of regrow_inference_refused_requests_total: a body that is
# not a request of the protocol (malformed), inputs that are not the model's columns (columns: names, count,
# shapes, datatypes), a value its column cannot take (values: text in a numeric column, infinity, a category
# too long), too many rows (rows, 413), or a server too busy to answer in time (overloaded, 429). A refused
# request reached no model: the canary's gates and the latency histogram leave it out.
Refusal = Literal["malformed", "columns", "values", "rows", "overloaded"]


def answered(code: int) -> bool:
    """Whether a status code is an inference answer (2xx) or the version's failure (5xx), as the canary's
    gates count requests: a refused request (4xx, 429 included) is neither."""
    return 200 <= code < 300 or code >= 500
