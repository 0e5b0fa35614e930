"""What serving pods export and the operator reads back, in one place so that the two cannot disagree."""

from __future__ import annotations

# regrow_inference_request_duration_seconds' bucket bounds (+Inf follows), which the canary's p99 is read from.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SHED = 429  # load shedding: neither an answer nor an error of the version (the server was busy)
