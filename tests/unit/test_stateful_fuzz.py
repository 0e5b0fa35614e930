"""Sequences of requests, not single bodies: hypothesis' rule-based state machines drive a real ``regrow serve``
(iris: one FP32 tensor; penguins: categorical and numeric columns) with well-formed inference requests of any
size (v2 and v1, categories of every length, NULs, missing values), fuzzed bodies, scrapes of ``/metrics`` and
readiness probes, interleaved, across many flushes of the feature bins (FLUSH_ROWS lowered to 64 here, from
8,192). After every step: no 5xx, the server ready, at most FLUSH_ROWS rows held for the bins; at every scrape,
every feature's bins and ``regrow_inference_rows_total`` count exactly the rows answered 200, none dropped.
50 sequences of at most 40 steps a model in CI (about 30 s for both); ``REGROW_FUZZ_EXAMPLES`` sets more."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from prometheus_client.parser import text_string_to_metric_families

from regrow.serving import metrics
from regrow.serving.server import InferenceServer
from regrow.tabular import MAX_CATEGORY_CHARS
from tests.unit.test_mixed import CATEGORICAL, COLUMNS, publish_penguins
from tests.unit.test_protocol_fuzz import MIXED, V2, Client
from tests.unit.test_server import FEATURES, Server, local, publish_iris, start, stop, wait_ready

FLUSH_ROWS = 64
STATEFUL = settings(
    max_examples=int(os.environ.get("REGROW_FUZZ_EXAMPLES", "50")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
NUMBER = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-1000, 1000))
CATEGORY = st.one_of(
    st.none(),
    st.sampled_from(["Biscoe", "Dream", "Torgersen", "male", "female", "", "Dream\0", "DREAM", "ドリーム"]),
    st.text(max_size=12),
    st.integers(-3, 3),
    st.booleans(),
    st.integers(MAX_CATEGORY_CHARS - 2, MAX_CATEGORY_CHARS + 2).map(lambda n: "x" * n),  # at the bound
)
ROWS = st.integers(1, 40)


@pytest.fixture
def small_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FLUSH_ROWS", FLUSH_ROWS)


class Serving(RuleBasedStateMachine):
    """What every model's machine does; a subclass says how to make a valid request and the fuzzed ones."""

    server: Server
    inference: InferenceServer
    model: str
    features: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.client = Client(self.server.port)
        self.answered = self._scrape()["rows"]  # rows answered 200 so far, as counted from the start
        self.statuses: defaultdict[int, int] = defaultdict(int)

    def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        status = self.client.post(path, body, headers)
        self.statuses[status] += 1
        assert status < 500, (path, body[:300])
        return status

    def _scrape(self) -> dict[str, Any]:
        status, text = self.server.call("GET", "/metrics")
        assert status == 200
        rows, dropped = 0.0, 0.0
        bins: defaultdict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "regrow_inference_rows_total":
                    rows += sample.value
                elif sample.name == "regrow_feature_bin_total":
                    bins[sample.labels["feature"]] += sample.value
                elif sample.name == "regrow_feature_bin_dropped_rows_total":
                    dropped += sample.value
        return {"rows": rows, "bins": bins, "dropped": dropped}

    @rule()
    def scrape(self) -> None:
        """A scrape flushes the bins: every feature's bins hold each row answered, once."""
        seen = self._scrape()
        assert seen["dropped"] == 0 and seen["rows"] == self.answered
        assert {f: seen["bins"][f] for f in self.features} == dict.fromkeys(self.features, self.answered)

    @invariant()
    def ready_and_bounded(self) -> None:
        assert self.server.call("GET", "/v2/health/ready")[0] == 200
        bins = self.inference.state.metrics.bins  # type: ignore[union-attr]
        assert bins is not None and bins.pending_rows < FLUSH_ROWS


class Iris(Serving):
    model, features = "iris", FEATURES

    @rule(rows=st.lists(st.lists(NUMBER, min_size=4, max_size=4), min_size=1, max_size=40), v1=st.booleans())
    def infer(self, rows: list[list[Any]], v1: bool) -> None:
        body = {"instances": rows} if v1 else {"inputs": [{"name": "input", "shape": [len(rows), 4],
                                                          "datatype": "FP32", "data": rows}]}  # fmt: skip
        path = "/v1/models/iris:predict" if v1 else "/v2/models/iris/infer"
        assert self._post(path, json.dumps(body).encode()) == 200
        self.answered += len(rows)

    @rule(body=V2)
    def fuzzed(self, body: dict[str, Any]) -> None:
        if self._post("/v2/models/iris/infer", json.dumps(body).encode()) == 200:
            self.answered += len(body["inputs"][0]["data"]) // 4 if len(body["inputs"]) == 1 else len(
                body["inputs"][0]["data"]
            )  # fmt: skip


class Penguins(Serving):
    model, features = "penguins", COLUMNS

    @rule(n=ROWS, data=st.data(), v1=st.booleans())
    def infer(self, n: int, data: st.DataObject, v1: bool) -> None:
        columns = {c: data.draw(st.lists(CATEGORY if c in CATEGORICAL else NUMBER, min_size=n, max_size=n), c)
                   for c in COLUMNS}  # fmt: skip
        too_long = any(isinstance(v, str) and len(v) > MAX_CATEGORY_CHARS for c in CATEGORICAL for v in columns[c])
        if v1:
            body: dict[str, Any] = {"instances": [{c: columns[c][i] for c in COLUMNS} for i in range(n)]}
            path = "/v1/models/penguins:predict"
        else:
            body = {"inputs": [{"name": c, "shape": [n], "datatype": "BYTES" if c in CATEGORICAL else "FP32",
                                "data": columns[c]} for c in COLUMNS]}  # fmt: skip
            path = "/v2/models/penguins/infer"
        assert self._post(path, json.dumps(body).encode()) == (400 if too_long else 200)
        self.answered += 0 if too_long else n

    @rule(body=MIXED)
    def fuzzed(self, body: dict[str, Any]) -> None:
        if self._post("/v2/models/penguins/infer", json.dumps(body).encode()) == 200:
            self.answered += len(body["inputs"][0]["data"])


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    iris, penguins = tmp_path_factory.mktemp("stateful-iris"), tmp_path_factory.mktemp("stateful-penguins")
    publish_iris(iris)
    publish_penguins(penguins, "randomForest")
    return {"iris": iris, "penguins": penguins}


@pytest.fixture
def serving(roots: dict[str, Path], request: pytest.FixtureRequest, small_flushes: None) -> Iterator[type[Serving]]:
    machine: type[Serving] = request.param
    server, inference = start(local(roots[machine.model], model=machine.model, alias="champion"))
    try:
        wait_ready(server)
        machine.server, machine.inference = server, inference
        yield machine
    finally:
        stop(inference, server)


@pytest.mark.parametrize("serving", [Iris, Penguins], indirect=True, ids=["iris", "penguins"])
def test_no_sequence_of_requests_breaks_or_blinds_a_server(serving: type[Serving]) -> None:
    run_state_machine_as_test(serving, settings=STATEFUL)
