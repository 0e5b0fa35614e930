"""The ASGI application: OIP v2 and v1 routes, health, and /metrics, with no framework in the way.

Every client error is a 4xx with a JSON body ``{"error": "..."}``; nothing a client sends can make it
answer 500 or stop the process.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from regrow import __version__
from regrow.inference import Prediction
from regrow.serving.metrics import ServingMetrics
from regrow.serving.model import LoadedModel
from regrow.serving.predlog import PredictionLog
from regrow.serving.protocol import (
    BINARY_HEADER,
    BadRequest,
    split_binary,
    v1_inputs,
    v1_predictions,
    v2_inputs,
    v2_outputs,
)

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]
DEFAULT_MAX_BODY = 8 * 1024 * 1024


@dataclass
class State:
    """What the server knows: the model (once loaded), why not (until then), and whether it drains."""

    name: str
    model: LoadedModel | None = None
    metrics: ServingMetrics | None = None
    error: str = "the model is loading"
    waiting: bool = True  # for the registry to publish the model, as opposed to failing to load it
    draining: bool = False
    alias: str | None = None
    alias_version: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    feature_bins: bool = True
    predictions: PredictionLog | None = None

    def serve(self, model: LoadedModel, predictions: PredictionLog | None = None) -> None:
        self.metrics = ServingMetrics(model, self.feature_bins)
        if predictions is not None:
            self.metrics.registry.register(predictions)
        self.predictions = predictions
        self.model = model
        self.error = ""

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining


class App:
    def __init__(self, state: State) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if method == "POST":
                await self._post(path, scope, receive, send)
            elif method == "GET":
                await self._get(path, send)
            else:
                raise BadRequest(f"method {method} is not allowed", 405)
        except BadRequest as error:
            await respond(send, error.status, {"error": str(error)})

    async def _get(self, path: str, send: Send) -> None:
        state = self.state
        if path == "/v2/health/live":
            await respond(send, 200, {"live": True})
        elif path == "/v2/health/ready":
            await respond(send, 200 if state.ready else 503, {"ready": state.ready, **self._why()})
        elif path == "/metrics":
            body = generate_latest(state.metrics.registry) if state.metrics else b""
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        elif path == "/v2":
            await respond(send, 200, {"name": "regrow", "version": __version__, "extensions": []})
        elif path.startswith("/v2/models/"):
            rest = self._model_path(path[len("/v2/models/") :])
            if rest == "":
                await respond(send, 200, self._metadata())
            elif rest == "/profile" and state.model is not None:  # the reference profile, for drift checks
                await send({"type": "http.response.start", "status": 200, "headers": JSON})
                await send({"type": "http.response.body", "body": state.model.profile.to_json()})
            elif rest == "/ready":
                await respond(
                    send, 200 if state.ready else 503, {"name": state.name, "ready": state.ready, **self._why()}
                )
            else:
                raise BadRequest(f"no such endpoint: GET {path}", 404)
        else:
            raise BadRequest(f"no such endpoint: GET {path}", 404)

    def _why(self) -> dict[str, str]:
        if self.state.draining:
            return {"error": "the server is shutting down"}
        if not self.state.error:
            return {}
        return {"error": self.state.error, "reason": "ModelNotPublished" if self.state.waiting else "ModelUnavailable"}

    def _model_path(self, rest: str) -> str:
        """Check the model name (and version) at the start of ``rest``; return what follows them."""
        name, _, rest = rest.partition("/")
        rest = "/" + rest if rest else ""
        if name != self.state.name:
            raise BadRequest(f"model {name} is not served here; this server serves {self.state.name}", 404)
        if rest.startswith("/versions/"):
            version, _, tail = rest[len("/versions/") :].partition("/")
            serving = self.state.model.version if self.state.model else None
            if version != serving:
                raise BadRequest(f"version {version} of {name} is not served here (serving {serving})", 404)
            rest = "/" + tail if tail else ""
        return rest

    def _metadata(self) -> dict[str, Any]:
        state, model = self.state, self.state.model
        parameters: dict[str, Any] = {"alias": state.alias, "alias_version": state.alias_version}
        if model is None:
            return {
                "name": state.name,
                "versions": [],
                "platform": "onnxruntime",
                "parameters": {**parameters, **self._why()},
            }
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, len(model.features)]}],
            "outputs": [
                {"name": "label" if model.task == "classification" else "value", "datatype": "BYTES", "shape": [-1]}
            ]
            + (
                [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.classes)]}]
                if model.classes
                else []
            ),
            "parameters": {
                **parameters,
                "uri": model.uri,
                "task": model.task,
                "features": model.features,
                "classes": model.classes,
                "metrics": model.metadata.get("metrics", {}),
            },
        }

    async def _post(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if path.startswith("/v2/models/"):
            protocol = "v2"
            rest = self._model_path(path[len("/v2/models/") :])
            if rest == "/feedback":
                await self._feedback(receive, send)
                return
            if rest != "/infer":
                raise BadRequest(f"no such endpoint: POST {path}", 404)
        elif path == f"/v1/models/{self.state.name}:predict":
            protocol = "v1"
        elif path.startswith("/v1/models/") and path.endswith(":predict"):
            raise BadRequest(f"model {path[len('/v1/models/') : -len(':predict')]} is not served here", 404)
        else:
            raise BadRequest(f"no such endpoint: POST {path}", 404)
        binary_header = next((v.decode() for k, v in scope["headers"] if k == BINARY_HEADER.encode()), None)
        await self._infer(protocol, binary_header, receive, send)

    async def _infer(self, protocol: str, binary_header: str | None, receive: Receive, send: Send) -> None:
        state = self.state
        model, metrics = state.model, state.metrics
        if model is None or metrics is None:
            raise BadRequest(f"the model is not ready: {state.error}", 503)
        started = time.perf_counter()
        code, x = 500, None
        metrics.in_flight.inc()
        try:
            body, binary = split_binary(await read_body(receive, state.max_body), binary_header)
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise BadRequest(f"the body is not valid JSON: {error}") from None
            if protocol == "v2":
                x = v2_inputs(request, model.features, binary)
                prediction = model.session.predict(x)
                response: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                                            "outputs": v2_outputs(prediction)}  # fmt: skip
                if isinstance(request.get("id"), str):
                    response["id"] = request["id"]
            else:
                x = v1_inputs(request, model.features)
                prediction = model.session.predict(x)
                response = {"predictions": v1_predictions(prediction), "model_version": model.version}
            if state.predictions is not None and state.predictions.sampled():
                response["id"] = log_prediction(state.predictions, response.get("id"), x, prediction)
            code = 200
            await respond(send, 200, response)
        except BadRequest as error:
            code, x = error.status, None
            raise
        finally:
            metrics.in_flight.dec()
            metrics.request(protocol, code, time.perf_counter() - started, x)

    async def _feedback(self, receive: Receive, send: Send) -> None:
        """Labels for logged predictions: {"id": ..., "label": ...} or {"feedback": [{"id": ..., "label": ...}]}."""
        predictions = self.state.predictions
        if predictions is None:
            raise BadRequest("feedback needs the prediction log (spec.predictionLog.samplePercent above 0)", 404)
        try:
            body = orjson.loads(await read_body(receive, self.state.max_body))
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from None
        items = body.get("feedback") if isinstance(body, dict) and "feedback" in body else [body]
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("id"), str) and "label" in i for i in items
        ):
            raise BadRequest('feedback is {"id": "<request id>", "label": ...} or {"feedback": [such objects]}')
        now = time.time()
        accepted = sum(predictions.offer("feedback", {"id": i["id"], "label": i["label"], "time": now}) for i in items)
        await respond(send, 202, {"accepted": accepted, "dropped": len(items) - accepted})


def log_prediction(
    log: PredictionLog, request_id: str | None, x: npt.NDArray[np.float32], prediction: Prediction
) -> str:
    """Queue one request's inputs and outputs; return the id that feedback will name it by."""
    request_id = request_id or uuid.uuid4().hex
    inputs = x.astype(object)
    inputs[np.isnan(x)] = None  # a missing value as null
    record: dict[str, Any] = {
        "id": request_id,
        "time": time.time(),
        "inputs": inputs.tolist(),
        "outputs": v1_predictions(prediction),
    }
    if prediction.probabilities is not None:
        record["probabilities"] = prediction.probabilities.tolist()
    log.offer("predictions", record)
    return request_id


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away", 499)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
