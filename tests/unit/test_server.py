"""The inference server, for real: on a loopback port the test picks, serving a model the trainer made."""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as oip
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from regrow.api import TrainingJobSpec, parse_spec
from regrow.api.modeldeployment import ModelSource
from regrow.cli import main
from regrow.contracts import AliasReading, ModelMetadata, ServingEnv, key_fingerprint
from regrow.controller import canary
from regrow.controller.modeldeployment import PodReport, report
from regrow.inference import OnnxModel
from regrow.manifests.serving import CONTAINER
from regrow.serving.feedback import Signer
from regrow.serving.predlog import PredictionLog
from regrow.serving.server import InferenceServer, ServeConfig
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train
from tests.cluster import free_port
from tests.helpers import HangingStore

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def publish_iris(
    root: Path, algorithm: str = "logisticRegression", alias: str = "champion", csv: bytes | None = None
) -> str:
    """Train iris (or ``csv``, iris-shaped) into ``root``'s registry and point ``alias`` at it; its version."""
    data = root / "iris.csv"
    data.write_bytes(sample_csv("iris") if csv is None else csv)
    spec = parse_spec(
        TrainingJobSpec,
        {
            "dataset": {"uri": f"file://{data}", "target": "species"},
            "model": {"algorithm": algorithm},
            "output": {"registry": f"file://{root}/registry", "modelName": "iris"},
            "promote": {"alias": alias},
        },
    )
    return train(spec, data.read_bytes(), Registry(open_store(f"file://{root}/registry")), {}).version


@dataclass
class Server:
    port: int
    thread: threading.Thread

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data.decode()


def start(config: ServeConfig) -> tuple[Server, InferenceServer]:
    inference = InferenceServer(config)
    thread = threading.Thread(target=lambda: uvloop.run(inference.run()), daemon=True)  # as `regrow serve`
    thread.start()
    server = Server(config.port, thread)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if server.call("GET", "/v2/health/live")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    return server, inference


def stop(inference: InferenceServer, server: Server) -> None:
    inference.stop()
    server.thread.join(10)


def local(root: Path, **options: Any) -> ServeConfig:
    """A server for the registry under ``root`` on a free loopback port, draining at once when stopped."""
    defaults: dict[str, Any] = {
        "registry": f"file://{root}/registry",
        "model": "iris",
        "host": "127.0.0.1",
        "port": free_port(),
        "drain_seconds": 0,
    }
    return ServeConfig(**{**defaults, **options})


@contextmanager
def running(config: ServeConfig) -> Iterator[Server]:
    server, inference = start(config)
    try:
        yield server
    finally:
        stop(inference, server)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, str]]:
    root = tmp_path_factory.mktemp("serve")
    version = publish_iris(root)
    config = local(root, alias="champion", max_body=64 * 1024)
    server, inference = start(config)
    wait_ready(server)
    yield server, root, version
    stop(inference, server)


def wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.call("GET", "/v2/health/ready")[0] != 200:
        assert time.monotonic() < deadline, server.call("GET", "/v2/health/ready")
        time.sleep(0.1)


def v2(rows: list[list[Any]], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}], **extra}


def test_health_and_metadata(iris: tuple[Server, Path, str]) -> None:
    server, _, version = iris
    assert server.call("GET", "/v2/health/live") == (200, {"live": True})
    assert server.call("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.call("GET", "/v2/models/iris/ready") == (200, {"name": "iris", "ready": True})
    status, meta = server.call("GET", "/v2/models/iris")
    assert status == 200
    assert meta["versions"] == [version]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"]["features"] == FEATURES
    assert meta["parameters"]["alias"] == "champion" and meta["parameters"]["alias_version"] == version
    assert 0 <= meta["parameters"].pop("alias_age_seconds") <= 30  # it reads the alias every refresh (30 s)
    again = server.call("GET", f"/v2/models/iris/versions/{version}")[1]
    assert again["parameters"].pop("alias_age_seconds") >= 0 and again == meta
    assert server.call("GET", "/v2")[1]["name"] == "regrow"
    profile = server.call("GET", "/v2/models/iris/profile")[1]
    assert [f["name"] for f in profile["features"]] == FEATURES


def test_v2_infer_agrees_with_onnxruntime(iris: tuple[Server, Path, str]) -> None:
    server, root, version = iris
    status, body = server.call("POST", "/v2/models/iris/infer", v2(ROWS, id="req-1"))
    assert status == 200
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris", version, "req-1")
    labels, probabilities = body["outputs"]
    direct = OnnxModel((root / "registry/iris/versions" / version / "model.onnx").read_bytes()).predict(np.array(ROWS))
    assert labels == {"name": "label", "shape": [3], "datatype": "BYTES", "data": direct.outputs.tolist()}
    assert probabilities["shape"] == [3, 3]
    assert probabilities["data"] == pytest.approx(direct.probabilities.ravel().tolist(), abs=1e-6)  # type: ignore[union-attr]
    assert labels["data"][0] == "setosa"
    flat = v2(ROWS)
    flat["inputs"][0]["data"] = [v for row in ROWS for v in row]
    assert server.call("POST", f"/v2/models/iris/versions/{version}/infer", flat)[1]["outputs"][0] == labels
    per_feature = {
        "inputs": [
            {"name": f, "shape": [3], "datatype": "FP64", "data": [r[i] for r in ROWS]} for i, f in enumerate(FEATURES)
        ]
    }
    assert server.call("POST", "/v2/models/iris/infer", per_feature)[1]["outputs"][0] == labels


def test_v1_predict(iris: tuple[Server, Path, str]) -> None:
    server, _, version = iris
    assert server.call("POST", "/v1/models/iris:predict", {"instances": ROWS[:2]}) == (
        200,
        {"predictions": ["setosa", "virginica"], "model_version": version},
    )


BAD = [
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        400,
        "shape must be [n, 4]",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
        400,
        "datatype must be one of",
    ),
    # Each of these was a 500 (found by a review, then by tests/unit/test_protocol_fuzz.py).
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": ["FP32"], "data": [1, 2, 3, 4]}]},
        400,
        "datatype must be one of",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        400,
        "needs name, shape, datatype and data",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": ["input"], "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        400,
        "name must be a string",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": n, "shape": [1], "datatype": "FP32", "data": [1]} for n in (1, "sepal_length_cm")]},
        400,
        "name must be a string",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [True, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        400,
        "non-negative integers",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        400,
        "do not fill shape",
    ),
    ("POST", "/v2/models/iris/infer", v2([[1, 2, 3, "x"]]), 400, "must be numbers"),
    ("POST", "/v2/models/iris/infer", v2([[1, 2, 3], [4, 5, 6, 7]]), 400, "must be numbers"),
    ("POST", "/v2/models/iris/infer", {"instances": [[1, 2, 3, 4]]}, 400, '"inputs" array'),
    ("POST", "/v2/models/iris/infer", [1, 2], 400, '"inputs" array'),
    ("POST", "/v2/models/iris/infer", {"inputs": [{"name": "x"}]}, 400, "needs name, shape, datatype and data"),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}] * 2},
        400,
        "inputs must be exactly",
    ),
    ("POST", "/v2/models/wine/infer", v2(ROWS), 404, "model wine is not served here"),
    ("POST", "/v2/models/iris/versions/0000/infer", v2(ROWS), 404, "version 0000 of iris is not served here"),
    ("POST", "/v1/models/iris:predict", {"instances": [[1, 2]]}, 400, "rows of 4 numbers"),
    ("POST", "/v1/models/wine:predict", {"instances": ROWS}, 404, "model wine is not served here"),
    ("GET", "/v2/models/iris/infer", None, 404, "no such endpoint"),
    ("GET", "/nothing", None, 404, "no such endpoint"),
    ("PUT", "/v2/models/iris/infer", v2(ROWS), 405, "method PUT is not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD)
def test_bad_requests_get_a_4xx_with_a_message(
    iris: tuple[Server, Path, str], method: str, path: str, body: Any, status: int, message: str
) -> None:
    server = iris[0]
    got_status, got = server.call(method, path, body)
    assert got_status == status
    assert message in got["error"]
    assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200  # still serving


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": [{"name": "i", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 1e999]}]}', 400, "JSON"),
        (b"x" * (64 * 1024 + 1), 413, "exceeds the limit"),
    ],
)
def test_malformed_bodies_get_a_4xx(iris: tuple[Server, Path, str], raw: bytes, status: int, message: str) -> None:
    got_status, got = iris[0].call("POST", "/v2/models/iris/infer", raw=raw)
    assert got_status == status and message in got["error"]


INFER = ("/v2/models/iris/infer", "/v1/models/iris:predict")
REFUSED = [(path, body) for method, path, body, code, _ in BAD if method == "POST" and path in INFER and code == 400]


def test_refused_requests_are_counted_by_reason_and_never_reach_the_canarys_gates(tmp_path: Path) -> None:
    """Every malformed inference request (and one of too many rows) is counted by reason in
    ``regrow_inference_refused_requests_total``; the operator reads none of them as the version's requests,
    and the latency histogram it reads the p99 gate from does not move, so a flood of cheap bad requests can
    neither meet a step's minRequests nor dilute its gates (6,000 bodies of {} once moved a p99 from 0.16 s
    to 0.0035 s)."""
    version = publish_iris(tmp_path)
    with running(local(tmp_path, version=version, max_rows=10)) as server:
        wait_ready(server)
        for _ in range(3):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200

        def read() -> np.ndarray:
            return canary.read_version(server.call("GET", "/metrics")[1], "iris", version, None)

        before = read()
        for path, body in [*REFUSED, ("/v2/models/iris/infer", {})]:
            assert server.call("POST", path, body)[0] == 400
        assert server.call("POST", "/v2/models/iris/infer", raw=b"{not json")[0] == 400
        assert server.call("POST", "/v1/models/iris:predict", {"instances": ROWS * 4})[0] == 413
        after, text = read(), server.call("GET", "/metrics")[1]
    assert after[canary.ANSWERED] == before[canary.ANSWERED] == 3
    assert (
        after[canary.BUCKETS : canary.SHADOW_BUCKETS].tolist()
        == before[canary.BUCKETS : canary.SHADOW_BUCKETS].tolist()
    )
    refused = {
        (s.labels["protocol"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "regrow_inference_refused_requests_total"
    }
    assert sum(refused.values()) == len(REFUSED) + 3
    assert refused["v2", "values"] == 2  # a string in a numeric column: a data problem, not traffic
    assert refused == {("v1", "columns"): 1, ("v1", "rows"): 1, ("v2", "columns"): 3, ("v2", "malformed"): 11,
                       ("v2", "values"): 2}  # fmt: skip


def _binary(inputs: list[tuple[str, list[int], str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A request in the binary tensor data extension: the JSON header, then each input's raw bytes."""
    header = json.dumps({"inputs": [{"name": n, "shape": s, "datatype": t, "parameters": {"binary_data_size": len(b)}}
                                    for n, s, t, b in inputs]}).encode()  # fmt: skip
    return header + b"".join(b for *_, b in inputs), {"Inference-Header-Content-Length": str(len(header))}


def test_unchanged_open_inference_protocol_clients_work(iris: tuple[Server, Path, str]) -> None:
    """Triton's HTTP client (the KServe v2 protocol; binary tensor data by default) needs no change."""
    server, _, version = iris
    client = oip.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("iris")
    assert client.get_model_metadata("iris")["versions"] == [version]
    expected = server.call("POST", "/v2/models/iris/infer", v2(ROWS))[1]["outputs"]
    x = np.array(ROWS, dtype=np.float32)
    for binary in (True, False):
        tensor = oip.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        # Naming no outputs, the client asks for all of them in binary, as bytes for BYTES.
        result = client.infer("iris", [tensor], model_version=version, request_id="r-1")
        assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == version
        assert [label.decode() for label in result.as_numpy("label")] == expected[0]["data"]
        assert result.as_numpy("probabilities").tolist() == np.float32(expected[1]["data"]).reshape(3, 3).tolist()
        only = client.infer("iris", [tensor], outputs=[oip.InferRequestedOutput("probabilities", binary_data=binary)])
        assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
        assert only.as_numpy("probabilities").tolist() == result.as_numpy("probabilities").tolist()
    columns = [oip.InferInput(name, [3], "FP64") for name in FEATURES]  # one tensor per feature, as float64
    for column, values in zip(columns, x.T, strict=True):
        column.set_data_from_numpy(values.astype(np.float64))
    assert [label.decode() for label in client.infer("iris", columns).as_numpy("label")] == expected[0]["data"]


def test_binary_outputs_follow_the_json_header(iris: tuple[Server, Path, str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", iris[0].port, timeout=10)
    request = v2(ROWS, parameters={"binary_data_output": True}, outputs=[{"name": "label"}, {"name": "probabilities"}])
    request["outputs"][0]["parameters"] = {"binary_data": False}  # an output's own choice wins
    connection.request("POST", "/v2/models/iris/infer", json.dumps(request))
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200 and response.getheader("content-type") == "application/octet-stream"
    length = int(response.getheader("inference-header-content-length") or 0)
    header, data = json.loads(body[:length]), body[length:]
    labels, probabilities = header["outputs"]
    assert labels["data"] == iris[0].call("POST", "/v2/models/iris/infer", v2(ROWS))[1]["outputs"][0]["data"]
    assert "data" not in probabilities and probabilities["parameters"] == {"binary_data_size": 9 * 4} == {
        "binary_data_size": len(data)
    }
    values = np.frombuffer(data, "<f4").reshape(3, 3)
    assert np.allclose(values.sum(axis=1), 1, atol=1e-6) and values.argmax(axis=1).tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"outputs": [{"name": "nope"}]}, "there is no output nope (outputs: label, probabilities)"),
        ({"outputs": "label"}, '"outputs" must be a list of objects with a "name"'),
        ({"parameters": ["binary_data_output"]}, '"parameters" must be a JSON object'),
        ({"outputs": [{"name": "label", "parameters": 1}]}, '"parameters" must be a JSON object'),
    ],
)
def test_bad_output_requests_get_a_400(iris: tuple[Server, Path, str], extra: dict[str, Any], message: str) -> None:
    status, got = iris[0].call("POST", "/v2/models/iris/infer", v2(ROWS, **extra))
    assert (status, got["error"]) == (400, message)


@pytest.mark.parametrize(
    ("inputs", "length", "message"),
    [
        ([("input", [1, 4], "FP32", b"\0" * 16)], "9999", "at most the body's"),
        ([("input", [1, 4], "FP32", b"\0" * 15)], None, "are not whole FP32 values"),
        ([("input", [1, 4], "BYTES", b"\0" * 16)], None, "datatype must be one of"),
        ([("input", [1, 4], "FP32", np.array([1, 2, 3, np.inf], np.float32).tobytes())], None, "finite"),
        ([("input", [2, 4], "FP32", b"\0" * 16)], None, "do not fill shape"),
    ],
)
def test_bad_binary_requests_get_a_400(
    iris: tuple[Server, Path, str], inputs: list[tuple[str, list[int], str, bytes]], length: str | None, message: str
) -> None:
    body, headers = _binary(inputs)
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    status, got = iris[0].call("POST", "/v2/models/iris/infer", raw=body, headers=headers)
    assert status == 400 and message in got["error"], got
    extra, headers = _binary([("input", [1, 4], "FP32", b"\0" * 16)])
    status, got = iris[0].call("POST", "/v2/models/iris/infer", raw=extra + b"\0" * 4, headers=headers)
    assert status == 400 and "belong to no input" in got["error"]
    odd = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": [16]}]}).encode()
    status, got = iris[0].call("POST", "/v2/models/iris/infer", raw=odd + b"\0" * 16,
                               headers={"Inference-Header-Content-Length": str(len(odd))})  # fmt: skip
    assert (status, got["error"]) == (400, '"parameters" must be a JSON object')
    for size in (-4, -16, True):  # negative sizes read the buffer backwards; a boolean is no size (were 500s)
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size}}]}).encode()  # fmt: skip
        status, got = iris[0].call("POST", "/v2/models/iris/infer", raw=head + b"\0" * 16,
                                   headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
        assert (status, got["error"]) == (400, "input input: binary_data_size does not match the data sent")


def test_metrics_count_every_feature_into_the_profile_bins(tmp_path: Path) -> None:
    version = publish_iris(tmp_path)
    config = local(tmp_path, version=version)
    with running(config) as server:
        wait_ready(server)
        for _ in range(5):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200
        assert server.call("POST", "/v1/models/iris:predict", {"instances": [[5.0, None, 100.0, -1.0]]})[0] == 200
        assert server.call("POST", "/v2/models/iris/infer", v2([[1, 2]]))[0] == 400
        text = server.call("GET", "/metrics")[1]
    bins: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("regrow_feature_bin_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1 : line.index("}")].split(","))
            assert labels["model"] == '"iris"' and labels["version"] == f'"{version}"'
            bins[labels["feature"].strip('"'), labels["bin"].strip('"')] = float(line.rsplit(" ", 1)[1])
    for feature in FEATURES:
        assert sum(v for (f, _), v in bins.items() if f == feature) == 16  # 5 x 3 rows + 1, not the rejected one
    assert bins["sepal_width_cm", "missing"] == 1
    assert bins["petal_length_cm", "overflow"] == 1
    assert bins["petal_width_cm", "underflow"] == 1
    # The predicted classes, counted like a feature: ROWS are a setosa, a virginica and a versicolor.
    predicted = {b: v for (f, b), v in bins.items() if f == "__prediction__"}
    assert set(predicted) == {"setosa", "versicolor", "virginica"} and sum(predicted.values()) == 16
    assert predicted["setosa"] >= 5 and predicted["virginica"] >= 5 and predicted["versicolor"] >= 5
    assert f'regrow_inference_requests_total{{code="400",model="iris",protocol="v2",version="{version}"}} 1.0' in text
    assert 'regrow_inference_rows_total{model="iris"' in text


def _as_the_operator_reads_it(server: Server, config: ServeConfig) -> PodReport:
    """The pod's model metadata through the one model both sides use, as the operator turns it into a report of
    a pod that its manifest made to follow ``config``'s alias."""
    answer = ModelMetadata.model_validate_json(json.dumps(server.call("GET", "/v2/models/iris")[1]))
    model = ModelSource(registry=config.registry, name=config.model, alias=config.alias)
    env = ServingEnv(registry=config.registry, model_name=config.model, model_alias=config.alias).variables()
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": CONTAINER, "env": env}]},
           "status": {"podIP": "127.0.0.1", "phase": "Running"}}  # fmt: skip
    return report(pod, model, lambda _: (answer, 0.0))


def test_waits_for_the_alias_then_serves_it(tmp_path: Path) -> None:
    config = local(tmp_path, alias="champion", refresh_seconds=0.2)
    with running(config) as server:
        deadline = time.monotonic() + 10
        while (reply := server.call("GET", "/v2/health/ready"))[1]["error"] == "the model is loading":
            assert time.monotonic() < deadline  # the first lookup has not answered yet
            time.sleep(0.05)
        status, body = reply
        assert status == 503 and "alias champion of model iris does not exist" in body["error"]
        assert body["reason"] == "ModelNotPublished"
        waiting = _as_the_operator_reads_it(server, config)
        assert waiting.waiting and waiting.serving is None and waiting.error == body["error"]
        assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 503
        version = publish_iris(tmp_path)
        wait_ready(server, 10)
        assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[1]["model_version"] == version
        serving = _as_the_operator_reads_it(server, config)
        assert (serving.serving, serving.reading, serving.error, serving.waiting) == (
            version,
            AliasReading(version=version, generation=1),
            None,
            False,
        )
        assert serving.uri is not None and serving.uri.endswith(f"/iris/versions/{version}")


def test_a_server_that_awaits_a_pinned_version_reads_the_alias_and_loads_nothing(tmp_path: Path) -> None:
    """A Canary's stable pod before the operator pins a version: it reports where the alias points, with its
    generation, and stays unready; it never serves a version on its own."""
    version = publish_iris(tmp_path)
    config = local(tmp_path, alias="champion", await_version=True, refresh_seconds=0.2)
    with running(config) as server:
        deadline = time.monotonic() + 10
        while (reply := server.call("GET", "/v2/health/ready"))[1].get("reason") != "AwaitingVersion":
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)
        time.sleep(0.5)  # it looked again, and still loads nothing
        status, body = server.call("GET", "/v2/health/ready")
        assert status == 503 and body["reason"] == "AwaitingVersion" and version in body["error"]
        awaiting = _as_the_operator_reads_it(server, config)
        assert awaiting.waiting and awaiting.serving is None
        assert awaiting.reading == AliasReading(version=version, generation=1)
        assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 503


def test_reports_a_moved_alias_but_keeps_serving_its_version(tmp_path: Path) -> None:
    first = publish_iris(tmp_path)
    config = local(tmp_path, alias="champion", refresh_seconds=0.2)
    with running(config) as server:
        wait_ready(server)
        second = publish_iris(tmp_path, algorithm="randomForest", alias="challenger")
        assert second != first
        Registry(open_store(f"file://{tmp_path}/registry")).set_alias("iris", "champion", second)
        deadline = time.monotonic() + 10
        while server.call("GET", "/v2/models/iris")[1]["parameters"]["alias_version"] != second:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        meta = server.call("GET", "/v2/models/iris")[1]
        assert meta["versions"] == [first] and meta["parameters"]["alias_generation"] == 2  # the second move


def test_sigterm_drains_then_stops(tmp_path: Path) -> None:
    publish_iris(tmp_path)
    config = local(tmp_path, alias="champion", drain_seconds=1.0)
    server, inference = start(config)
    wait_ready(server)
    inference.drain()
    assert server.call("GET", "/v2/health/ready") == (503, {"ready": False, "error": "the server is shutting down"})
    assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200  # still answering while draining
    server.thread.join(10)
    assert not server.thread.is_alive()
    with pytest.raises(OSError):
        server.call("GET", "/v2/health/live")


def test_silent_connections_close_after_the_configured_idle_timeout(tmp_path: Path) -> None:
    with running(local(tmp_path, idle_timeout=0.5)) as server:
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert connection.recv(1) == b""  # closed by the server within a tick of the timeout, not after 75 s
        connection.close()


def test_an_unreadable_model_is_reported_and_retried(tmp_path: Path) -> None:
    version = publish_iris(tmp_path)
    model = tmp_path / "registry/iris/versions" / version / "model.onnx"
    good = model.read_bytes()
    model.write_bytes(b"not an onnx model")
    config = local(tmp_path, alias="champion", refresh_seconds=0.2)
    with running(config) as server:
        deadline = time.monotonic() + 10
        while "could not load the model" not in server.call("GET", "/v2/health/ready")[1].get("error", ""):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert server.call("GET", "/v2/health/ready")[1]["reason"] == "ModelUnavailable"  # failing, not waiting
        assert server.call("GET", "/v2/health/live")[0] == 200
        model.write_bytes(good)
        wait_ready(server, 10)


def test_prediction_log_and_feedback(tmp_path: Path) -> None:
    version = publish_iris(tmp_path)
    config = local(tmp_path, version=version, log_percent=100, log_flush_seconds=0.2, feedback_key="k",
                   label_read_seconds=0.2)  # fmt: skip
    with running(config) as server:
        wait_ready(server)
        ids = [
            server.call("POST", "/v2/models/iris/infer", v2(ROWS))[1]["parameters"]["prediction_id"] for _ in range(3)
        ]
        named = server.call("POST", "/v2/models/iris/infer", v2([[5.0, None, 1.0, 0.2]], id="mine"))[1]
        assert named["id"] == "mine" and named["parameters"]["prediction_id"] not in ("mine", *ids)  # id: an echo
        assert server.call("POST", "/v1/models/iris:predict", {"instances": ROWS[:1]})[1]["prediction_id"]
        labels = [{"id": i, "label": ["setosa", "virginica", "versicolor"]} for i in ids]
        status, body = server.call("POST", "/v2/models/iris/feedback", {"feedback": labels})
        assert (status, body) == (202, {"accepted": 3, "repeated": 0})
        assert server.call("POST", "/v2/models/iris/feedback", {"id": 5})[0] == 400
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(records) < 5:
            assert time.monotonic() < deadline, records
            time.sleep(0.1)
            files = sorted((tmp_path / "registry/iris/predictions" / version).glob("*.jsonl"))
            records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        metrics = _metrics_once(server, "regrow_feedback_labelled_rows_total{")  # the labels read from the store
        quality = server.call("GET", "/v2/models/iris/quality?since=0")[1]
        for since in ("-1", "%C2%B2", "1e9", ""):  # "²" is a digit to str.isdigit, not to int()
            assert server.call("GET", f"/v2/models/iris/quality?since={since}")[0] == 400
        later = server.call("GET", f"/v2/models/iris/quality?since={int(time.time()) + 5}")[1]
    assert [r["id"] for r in records[:3]] == ids
    assert records[0]["inputs"] == [pytest.approx(r) for r in ROWS] and records[0]["outputs"][0] == "setosa"
    assert records[3]["id"] == named["parameters"]["prediction_id"] and records[3]["inputs"][0][1] is None
    feedback = [json.loads(line) for f in (tmp_path / "registry/iris/feedback" / version).rglob("*.jsonl")
                for line in f.read_text().splitlines()]  # fmt: skip
    assert sorted(f["id"] for f in feedback) == sorted(ids)
    written = 'kind="predictions",model="iris",outcome="written"'
    assert f'regrow_prediction_log_records_total{{{written},version="{version}"}} 5.0' in metrics
    assert f'regrow_feedback_total{{model="iris",outcome="accepted",reason="ok",version="{version}"}} 3.0' in metrics
    assert (
        f'regrow_feedback_total{{model="iris",outcome="rejected",reason="bad_request",version="{version}"}} 1.0'
        in metrics
    )
    right = sum(p == t for p, t in zip(records[0]["outputs"], ["setosa", "virginica", "versicolor"], strict=True))
    assert f'regrow_feedback_labelled_rows_total{{model="iris",version="{version}"}} 9.0' in metrics  # graded
    assert f'regrow_feedback_correct_rows_total{{model="iris",version="{version}"}} {3 * right}.0' in metrics
    assert quality["versions"] == {version: {"ids": 3, "rows": 9, "graded": 3 * right}} and quality["complete"]
    assert later["versions"] == {}  # no id issued since then


def test_feedback_is_shed_and_timed_as_inference_is_and_a_replayed_id_counts_once(tmp_path: Path) -> None:
    """Checking a thousand ids takes the loop a while: a feedback request that waited past the budget gets 429
    (counted, with Retry-After), every feedback request is timed, and one id repeated a thousand times in a
    batch is one label, written once."""
    version = publish_iris(tmp_path)
    server, inference = start(local(tmp_path, version=version, log_percent=100, log_flush_seconds=0.2,
                                    feedback_key="k" * 32, label_read_seconds=0.2))  # fmt: skip
    try:
        wait_ready(server)
        token = server.call("POST", "/v2/models/iris/infer", v2(ROWS[:1]))[1]["parameters"]["prediction_id"]
        replays = {"feedback": [{"id": token, "label": "setosa"}] * 999 + [{"id": token, "label": "virginica"}]}
        assert server.call("POST", "/v2/models/iris/feedback", replays) == (202, {"accepted": 1, "repeated": 0})
        assert server.call("POST", "/v2/models/iris/feedback", replays) == (202, {"accepted": 1, "repeated": 1})
        inference.state.waited = lambda: 1.0  # as if the loop had been busy for a second
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", "/v2/models/iris/feedback", body=json.dumps({"id": token, "label": "setosa"}))
        shed = connection.getresponse()
        assert (shed.status, shed.getheader("retry-after")) == (429, "1") and "overloaded" in shed.read().decode()
        inference.state.waited = lambda: 0.0
        metrics = _metrics_once(server, "regrow_feedback_labelled_rows_total{")
    finally:
        stop(inference, server)
    (written,) = (tmp_path / "registry/iris/feedback" / version).rglob("*.jsonl")
    assert [json.loads(line)["label"] for line in written.read_text().splitlines()] == ["virginica"]
    assert f'regrow_feedback_labelled_rows_total{{model="iris",version="{version}"}} 1.0' in metrics
    assert 'outcome="rejected",reason="overloaded"' in metrics and 'outcome="repeated",reason="ok"' in metrics
    assert 'regrow_feedback_request_duration_seconds_count{model="iris"} 3.0' in metrics


def test_with_labellers_named_only_their_tokens_label_and_each_label_records_who(tmp_path: Path) -> None:
    version = publish_iris(tmp_path)
    (tmp_path / "labellers/crm").mkdir(parents=True)
    (tmp_path / "labellers/crm/token").write_bytes(b"crm-token-0123456789abcdef\n")
    config = local(tmp_path, version=version, log_percent=100, log_flush_seconds=0.2, feedback_key="k" * 32,
                   labellers_dir=str(tmp_path / "labellers"))  # fmt: skip
    with running(config) as server:
        wait_ready(server)
        token = server.call("POST", "/v2/models/iris/infer", v2(ROWS[:1]))[1]["parameters"]["prediction_id"]
        body = json.dumps({"id": token, "label": "setosa"})
        answers = []
        for header in (None, "not-a-token-of-anyone", "crm-token-0123456789abcdef"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("POST", "/v2/models/iris/feedback", body=body,
                               headers={"regrow-labeller-token": header} if header else {})  # fmt: skip
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        deadline = time.monotonic() + 10
        while not (written := list((tmp_path / "registry/iris/feedback" / version).rglob("*.jsonl"))):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert [status for status, _ in answers] == [401, 401, 202]
    assert "named labellers" in answers[0][1]["error"] and "crm-token" not in json.dumps(answers)
    (record,) = [json.loads(line) for f in written for line in f.read_text().splitlines()]
    assert (record["label"], record["labeller"]) == ("setosa", "crm")


def test_a_pod_reports_the_keys_it_holds_and_takes_labels_for_ids_of_the_key_before(tmp_path: Path) -> None:
    """After a rotation: the pod signs with the new key, still takes labels for the ids the old one signed,
    and says which keys it holds by their fingerprints (so the operator sees a key it did not make)."""
    version = publish_iris(tmp_path)
    old, new = "the key before the rotation, 32+ bytes", "the key after the rotation, 32+ bytes"
    config = local(tmp_path, version=version, log_percent=100, feedback_key=new, feedback_previous_key=old)
    with running(config) as server:
        wait_ready(server)
        assert server.call("GET", "/v2/models/iris")[1]["parameters"]["keys"] == [
            key_fingerprint(new.encode()), key_fingerprint(old.encode())]  # fmt: skip
        before = Signer(old.encode()).issue(version, 1, time.time())
        stranger = Signer(b"a key regrow never made, 32+ bytes!").issue(version, 1, time.time())
        assert server.call("POST", "/v2/models/iris/feedback", {"id": before, "label": "setosa"})[0] == 202
        assert server.call("POST", "/v2/models/iris/feedback", {"id": stranger, "label": "setosa"})[0] == 400
        issued = server.call("POST", "/v2/models/iris/infer", v2(ROWS[:1]))[1]["parameters"]["prediction_id"]
        assert Signer(new.encode()).verify(issued, time.time()).version == version


def test_a_label_is_taken_within_the_label_horizon_only(tmp_path: Path) -> None:
    version, key = publish_iris(tmp_path), "the deployment's key, 32 bytes or more"
    config = local(tmp_path, version=version, log_percent=100, feedback_key=key, label_horizon_seconds=3600)
    with running(config) as server:
        wait_ready(server)
        signer, now = Signer(key.encode()), time.time()
        late = server.call(
            "POST", "/v2/models/iris/feedback", {"id": signer.issue(version, 1, now - 3700), "label": "setosa"}
        )
        assert late[0] == 400 and "label horizon (1h)" in late[1]["error"]
        timely = server.call(
            "POST", "/v2/models/iris/feedback", {"id": signer.issue(version, 1, now - 3500), "label": "setosa"}
        )
        assert timely[0] == 202


def _metrics_once(server: Server, name: str, timeout: float = 10) -> str:
    """The server's metrics, once they hold ``name``."""
    deadline = time.monotonic() + timeout
    while name not in (metrics := server.call("GET", "/metrics")[1]):
        assert time.monotonic() < deadline, f"no {name} within {timeout:.0f} s"
        time.sleep(0.1)
    return str(metrics)


def test_prediction_log_is_bounded_and_never_waits(tmp_path: Path) -> None:
    store = HangingStore()
    log = PredictionLog(store, "iris", "v1", 100, max_queue=3, flush_seconds=0.05)  # type: ignore[arg-type]
    time.sleep(0.1)  # the writer is idle; the next records queue up behind a store that hangs
    accepted: list[bool] = []
    offering = threading.Thread(
        target=lambda: accepted.extend(log.offer("predictions", {"id": str(i)}) for i in range(10))
    )
    offering.start()
    offering.join(5)  # the store hangs until released: an offer that waited for it would never return
    assert not offering.is_alive() and len(accepted) == 10
    counts = log.counts
    assert sum(accepted) <= 4 and counts[("predictions", "dropped")] >= 6
    store.released.set()
    log.close()
    assert counts[("predictions", "written")] == counts[("predictions", "queued")]
    assert counts[("predictions", "written")] + counts[("predictions", "dropped")] == 10
    assert not PredictionLog(store, "iris", "v1", 0, 3).sampled()  # type: ignore[arg-type]


def test_regrow_serve_listens_where_it_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """--host, else $REGROW_HOST, else every address (as in a pod)."""
    import regrow.serving.server  # noqa: PLC0415

    configs: list[ServeConfig] = []
    monkeypatch.setattr(regrow.serving.server, "run", configs.append)
    base = ["serve", "--registry", "file:///r", "--model", "iris", "--version", "v1"]
    monkeypatch.delenv("REGROW_HOST", raising=False)
    assert main(base) == 0 and configs[-1].host == "0.0.0.0"
    assert main([*base, "--host", "127.0.0.1"]) == 0 and configs[-1].host == "127.0.0.1"
    monkeypatch.setenv("REGROW_HOST", "::1")
    assert main(base) == 0 and configs[-1].host == "::1"
    monkeypatch.setenv("REGROW_METRICS_PORT", "9090")
    assert main(base) == 0 and (configs[-1].port, configs[-1].metrics_port) == (8080, 9090)


def test_service_link_variables_do_not_break_the_other_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kubernetes sets $<SERVICE>_PORT in pods that keep service links: a Service named regrow-metrics
    sets $REGROW_METRICS_PORT to tcp://... The pods regrow makes turn the links off, and a bad value
    only fails the command that reads it, naming each variable."""
    monkeypatch.setenv("REGROW_METRICS_PORT", "tcp://10.96.0.7:8081")
    monkeypatch.setenv("REGROW_PORT", "tcp://10.96.0.8:80")
    assert main(["crds", "--check"]) == 0  # another command: the serve options are not read
    assert main(["serve", "--registry", "file:///r", "--model", "iris", "--version", "v1"]) == 2
    assert capsys.readouterr().err == (
        "regrow serve: $REGROW_METRICS_PORT: Input should be a valid integer, unable to parse string as an integer; "
        "$REGROW_PORT: Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_a_request_of_too_many_rows_gets_413_before_its_data_is_read(tmp_path: Path) -> None:
    """Inference runs on the event loop, health probes too: a request is bounded in rows (--max-rows,
    10,000 by default), judged from its shape or its length before any value is converted."""
    version = publish_iris(tmp_path)
    with running(local(tmp_path, version=version, max_rows=100)) as server:
        wait_ready(server)
        rows = [[5.1, 3.5, 1.4, 0.2]] * 100
        assert server.call("POST", "/v2/models/iris/infer", v2(rows))[0] == 200
        assert server.call("POST", "/v1/models/iris:predict", {"instances": rows})[0] == 200
        for status, body in (
            server.call("POST", "/v2/models/iris/infer", v2([*rows, rows[0]])),
            server.call("POST", "/v1/models/iris:predict", {"instances": [*rows, rows[0]]}),
            server.call("POST", "/v2/models/iris/infer", {"inputs": [  # one input per feature, 101 values each
                {"name": f, "shape": [101], "datatype": "FP32", "data": [1.0] * 101} for f in FEATURES]}),
        ):  # fmt: skip
            assert (status, body["error"]) == (413, "at most 100 rows in one request: send 101 as several")


def test_an_overloaded_server_sheds_inference_and_keeps_answering_health(tmp_path: Path) -> None:
    """Past the event loop's lag budget inference requests get 429 with Retry-After, cheap enough for the
    loop to catch up; health probes are still answered, and the shed requests are counted."""
    version = publish_iris(tmp_path)
    with running(local(tmp_path, version=version, shed_after=0.005)) as server:
        wait_ready(server)
        body = json.dumps(v2([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]] * 1500)).encode()
        codes: collections.Counter[tuple[int, str | None]] = collections.Counter()
        probes: list[float] = []
        stop = threading.Event()

        def load() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            while not stop.is_set():
                connection.request("POST", "/v2/models/iris/infer", body=body)
                response = connection.getresponse()
                response.read()
                codes[response.status, response.getheader("retry-after")] += 1

        def probe() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                assert server.call("GET", "/v2/health/ready")[0] == 200
                probes.append(time.perf_counter() - started)
                time.sleep(0.02)

        threads = [threading.Thread(target=load) for _ in range(12)] + [threading.Thread(target=probe)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join(10)
        metrics = server.call("GET", "/metrics")[1]
    assert codes[200, None] > 0 and codes[429, "1"] > 0 and set(codes) == {(200, None), (429, "1")}, codes
    assert max(probes) < 1.0 and len(probes) > 10
    assert 'regrow_inference_requests_total{code="429"' in metrics and "regrow_event_loop_lag_seconds" in metrics
    print(
        f"\nshed {codes[429, '1']} of {sum(codes.values())} requests; slowest health probe {max(probes) * 1000:.0f} ms"
    )


def test_a_metrics_port_alone_answers_metrics_and_the_profile(tmp_path: Path) -> None:
    """With --metrics-port, what Prometheus and the operator read leaves the port clients reach, and the
    metrics port serves no inference: a NetworkPolicy can then keep each port to its readers."""
    version = publish_iris(tmp_path)
    config = local(tmp_path, version=version, metrics_port=free_port())
    with running(config) as server:
        wait_ready(server)
        metrics = Server(config.metrics_port, server.thread)
        assert server.call("POST", "/v2/models/iris/infer", v2([[5.1, 3.5, 1.4, 0.2]]))[0] == 200
        status, text = metrics.call("GET", "/metrics")
        assert status == 200 and 'regrow_inference_requests_total{code="200"' in text
        assert metrics.call("GET", "/v2/models/iris/profile")[0] == 200
        assert server.call("GET", "/metrics")[0] == 404
        assert server.call("GET", "/v2/models/iris/profile")[0] == 404
        status, body = metrics.call("POST", "/v2/models/iris/infer", v2([[5.1, 3.5, 1.4, 0.2]]))
        assert status == 404 and "metrics port" in body["error"]
        assert metrics.call("POST", "/v2/models/iris/feedback", {"feedback": []})[0] == 404
        for port in (server, metrics):  # health and metadata on both
            assert port.call("GET", "/v2/health/ready")[0] == 200 and port.call("GET", "/v2/models/iris")[0] == 200
