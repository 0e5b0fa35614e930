"""Bin counters scraped from pods, turned into counts over a window."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regrow.drift.profile import fit_profile
from regrow.drift.window import History, Scrape, bins_query, parse_bins, parse_query_result

PROFILE = fit_profile(np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]]), ["a", "b"], bins=2)


def v(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_parse_bins_reads_one_versions_counters() -> None:
    text = """# TYPE regrow_feature_bin_total counter
regrow_feature_bin_total{bin="b0",feature="a",model="iris",version="v1"} 3.0
regrow_feature_bin_total{bin="missing",feature="b",model="iris",version="v1"} 2.0
regrow_feature_bin_total{bin="b0",feature="a",model="iris",version="v0"} 99.0
regrow_feature_bin_total{bin="nope",feature="a",model="iris",version="v1"} 99.0
# TYPE regrow_inference_requests_total counter
regrow_inference_requests_total{code="200",model="iris",protocol="v2",version="v1"} 7.0
"""
    counts = parse_bins(text, PROFILE, "iris", "v1")
    a, b = PROFILE.split(counts)
    assert a.tolist() == [0, 3, 0, 0, 0] and b.tolist() == [0, 0, 0, 0, 2]


def test_increase_over_the_window_with_restarts_and_new_pods() -> None:
    history = History("v1")
    size = 3
    assert history.increase(60, size) is None
    history.add(Scrape(0, {"p1": v(10, 0, 0)}), 60)
    assert history.increase(60, size) is None  # one scrape is only a baseline
    history.add(Scrape(10, {"p1": v(15, 1, 0), "p2": v(4, 0, 0)}), 60)  # p2 started since
    assert history.increase(60, size).tolist() == [9, 1, 0]  # type: ignore[union-attr]
    history.add(Scrape(20, {"p1": v(2, 0, 0), "p2": v(6, 0, 1)}), 60)  # p1 restarted
    assert history.increase(60, size).tolist() == [13, 1, 1]  # type: ignore[union-attr]
    history.add(Scrape(75, {"p1": v(3, 0, 0), "p2": v(6, 0, 1)}), 60)
    # The window is now (15, 75]: the scrape at 10 is the baseline; p1 restarted (+2) then +1, p2 +2 and +1.
    assert [s.time for s in history.scrapes] == [10, 20, 75]
    assert history.increase(60, size).tolist() == [5, 0, 1]  # type: ignore[union-attr]


def test_the_prometheus_query_selects_one_version_and_quotes_label_values() -> None:
    query = bins_query("iris", "v1", 600.0, {"namespace": 'ml"x'})
    assert query == (
        'sum by (feature, bin) (increase(regrow_feature_bin_total{model="iris",version="v1",namespace="ml\\"x"}[600s]))'
    )


def test_a_prometheus_answer_in_the_profile_layout() -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"feature": "a", "bin": "b0"}, "value": [1.0, "2.6"]},  # increase() extrapolates: rounded
        {"metric": {"feature": "b", "bin": "missing"}, "value": [1.0, "4"]},
        {"metric": {"feature": "b", "bin": "b0"}, "value": [1.0, "NaN"]},
        {"metric": {"feature": "c", "bin": "b0"}, "value": [1.0, "9"]},  # not in the profile
    ]}}  # fmt: skip
    a, b = PROFILE.split(parse_query_result(json.dumps(answer).encode(), PROFILE))
    assert a.tolist() == [0, 3, 0, 0, 0] and b.tolist() == [0, 0, 0, 0, 4]


def test_a_prometheus_error_says_what_kind_and_repeats_nothing_else() -> None:
    error = {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}
    with pytest.raises(ValueError, match=r"refused the query \(bad_data\)") as refused:
        parse_query_result(json.dumps(error).encode(), PROFILE)
    assert "parse error" not in str(refused.value)


SECRET = "hunter2"
KEYS = st.sampled_from(["status", "data", "resultType", "result", "metric", "value", "errorType", "error", SECRET])
JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=5) | st.just(SECRET),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_answer_is_a_vector_or_a_value_error_that_repeats_none_of_it(answer: object) -> None:
    """A source URL may name anything that answers JSON (an internal service's config, say): what it
    answers is never copied into the policy's status."""
    try:
        parse_query_result(json.dumps(answer).encode(), PROFILE)
    except ValueError as error:
        assert SECRET not in str(error)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"status": "success"}',
     b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
     b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}}'],
)  # fmt: skip
def test_an_answer_that_is_no_vector_says_so(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a Prometheus instant-query vector|refused the query"):
        parse_query_result(body, PROFILE)
