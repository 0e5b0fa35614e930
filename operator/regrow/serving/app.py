"""The request handler: OIP v2 and v1 routes, health, and /metrics, with no framework in the way.

Every client error is a 4xx with a JSON body ``{"error": "..."}``; nothing a client sends can make it
answer 500 or stop the process.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from regrow import __version__
from regrow.api.modeldeployment import DEFAULT_SERVER as BOUNDS
from regrow.contracts import (
    AliasReading,
    ModelMetadata,
    ModelParameters,
    Reason,
    TensorMetadata,
    business_key_hash,
    key_fingerprint,
)
from regrow.inference import Batch, Prediction, rows
from regrow.serving.feedback import (
    MAX_AGE_SECONDS,
    FeedbackCounts,
    Recent,
    Rejected,
    Share,
    Signer,
    parse_feedback,
)
from regrow.serving.httpserver import Request, Response, error_response, json_response
from regrow.serving.labellers import HEADER as LABELLER_HEADER
from regrow.serving.labellers import Labellers
from regrow.serving.labels import LabelReader, feedback_folder
from regrow.serving.metrics import ServingMetrics
from regrow.serving.mirror import (
    CHALLENGE_HEADER,
    PASS_HEADER,
    PROOF_HEADER,
    SHADOW_PATH,
    Mirror,
    Mirrored,
    ShadowKey,
    ShadowOffer,
)
from regrow.serving.model import LoadedModel
from regrow.serving.predlog import PredictionLog
from regrow.serving.protocol import (
    BINARY_HEADER,
    BadRequest,
    business_keys,
    parse_json,
    requested_outputs,
    split_binary,
    v1_columns,
    v1_inputs,
    v1_predictions,
    v2_columns,
    v2_inputs,
    v2_outputs,
)
from regrow.tabular import missing
from regrow.telemetry import Refusal

RETRY_AFTER = b"retry-after: 1\r\n"


@dataclass
class State:
    """What the server knows: the model (once loaded), why not (until then), and whether it drains."""

    name: str
    model: LoadedModel | None = None
    metrics: ServingMetrics | None = None
    error: str = "the model is loading"
    reason: Reason = "ModelNotPublished"  # why no model is served: waiting (for the registry, or a pin), or failing
    draining: bool = False
    alias: str | None = None
    alias_reading: AliasReading | None = None  # where the alias pointed when last read, and its generation
    alias_read_at: float | None = None  # when it was last read (time.monotonic)
    feature_bins: bool = True
    max_rows: int = BOUNDS.max_rows
    predictions: PredictionLog | None = None
    in_flight: Callable[[], int] = lambda: 0  # the HTTP server's count of requests not answered yet
    lag: Callable[[], float] = lambda: 0.0  # the event loop's lag, in seconds
    waited: Callable[[], float] = lambda: 0.0  # about how long the request being answered waited, in seconds
    shed_after: float = BOUNDS.shed_after_milliseconds / 1000  # an inference request that waited longer gets 429
    signer: Signer = field(default_factory=lambda: Signer.from_env(None))
    label_horizon: float = MAX_AGE_SECONDS  # a label is taken until its prediction is this old
    keyed: bool = False  # whether the signer's key is the deployment's (else one of this process's own)
    issuer: str = field(default_factory=lambda: secrets.token_hex(4))  # names this process in the ids it issues
    feedback: FeedbackCounts | None = None
    labels: LabelReader | None = None  # grades the labels of the ids this process issued, each once
    recent: Recent = field(default_factory=Recent)  # the labels accepted lately: a repeat is not written again
    feedback_share: Share = field(default_factory=Share)  # the loop's time feedback took lately
    labellers: Labellers = field(default_factory=lambda: Labellers(None))  # who may label: none named, anyone
    shadow: int | None = None  # a shadow pod: the percent of requests it asks the stable pods to mirror
    mirror: Mirror | None = None  # a stable pod that mirrors to a shadow

    def serve(self, model: LoadedModel, predictions: PredictionLog | None = None,
              labels: LabelReader | None = None) -> None:  # fmt: skip
        self.metrics = ServingMetrics(model, self.in_flight, self.feature_bins and not self.shadow, self.lag)
        if self.mirror is not None:
            self.mirror.counts.version, self.mirror.counts.classifier = model.version, model.task == "classification"
            self.metrics.registry.register(self.mirror.counts)
        if predictions is not None:
            self.feedback = FeedbackCounts(model.name)
            self.metrics.registry.register(predictions)
            self.metrics.registry.register(self.feedback)
        if labels is not None:
            self.metrics.registry.register(labels.book)
        self.predictions, self.labels = predictions, labels
        self.model = model
        self.error = ""

    @property
    def ready(self) -> bool:
        """Serving, not draining, and counting what it serves into the drift bins."""
        return self.model is not None and not self.draining and (self.metrics is None or self.metrics.counting())


class App:
    """Answers one complete request; the HTTP server calls it, on the event loop.

    Inference runs to completion on the loop, so under load requests wait behind one another: an inference
    request that waited longer than ``shed_after`` gets 429 with ``Retry-After`` (counted with its code in
    ``regrow_inference_requests_total``), which costs the loop little, so it catches up; health, metadata and
    metrics are always answered.

    With a metrics port, the inference port's App serves no /metrics and no reference profile (``observed``
    False), and the metrics port's serves no inference or feedback (``inference`` False)."""

    def __init__(self, state: State, inference: bool = True, observed: bool = True) -> None:
        self.state = state
        self.inference = inference
        self.observed = observed

    def __call__(self, request: Request) -> Response:
        try:
            if request.method == "POST":
                return self._post(request)
            if request.method == "GET":
                return self._get(request)
            raise BadRequest(f"method {request.method} is not allowed", 405)
        except BadRequest as error:
            response = error_response(error.status, str(error))
            if error.status == 429:
                response.headers = RETRY_AFTER
            return response

    def _get(self, request: Request) -> Response:
        state, path = self.state, request.path
        if path == "/v2/health/live":
            return json_response(200, {"live": True})
        if path == "/v2/health/ready":
            return json_response(200 if state.ready else 503, {"ready": state.ready, **self._why().to_wire()})
        if path == "/metrics" and self.observed:
            body = generate_latest(state.metrics.registry) if state.metrics else b""
            return Response(200, body, CONTENT_TYPE_LATEST.encode())
        if path == "/v2":
            return json_response(200, {"name": "regrow", "version": __version__, "extensions": []})
        if path == SHADOW_PATH and state.shadow is not None:
            if state.model is None:
                raise BadRequest(f"the model is not ready: {state.error}", 503)
            offer = ShadowOffer(model=state.name, version=state.model.version, percent=state.shadow)
            body, challenge = offer.model_dump_json().encode(), request.headers.get(CHALLENGE_HEADER)
            proof = ShadowKey(*state.signer.keys).proof(challenge, body) if challenge else None
            return Response(200, body, headers=b"%s: %s\r\n" % (PROOF_HEADER, proof) if proof else b"")
        if path.startswith("/v2/models/"):
            return self._get_model(path, request.query)
        raise BadRequest(f"no such endpoint: GET {path}", 404)

    def _get_model(self, path: str, query: str) -> Response:
        state = self.state
        rest = self._model_path(path[len("/v2/models/") :])
        if rest == "":
            return json_response(200, self._metadata().to_wire())
        if rest == "/profile" and state.model is not None and self.observed:  # the reference profile, for drift checks
            return Response(200, state.model.profile.to_json())
        if rest == "/quality" and state.labels is not None and self.observed:  # for the canary's quality gate
            return json_response(200, state.labels.book.quality(_since(query)).model_dump(mode="json"))
        if rest == "/ready":
            return json_response(
                200 if state.ready else 503, {"name": state.name, "ready": state.ready, **self._why().to_wire()}
            )
        raise BadRequest(f"no such endpoint: GET {path}", 404)

    def _why(self) -> ModelParameters:
        """Why no model is served (nothing when one is), as the metadata and readiness answers say it."""
        if self.state.draining:
            return ModelParameters(error="the server is shutting down")
        if self.state.metrics is not None and not self.state.metrics.counting():
            return ModelParameters(error="the feature bins failed to count the last requests")
        if not self.state.error:
            return ModelParameters()
        return ModelParameters(error=self.state.error, reason=self.state.reason)

    def _reading(self) -> dict[str, Any]:
        """The alias this server follows, where it last read it to point, and the keys it holds (by their
        fingerprints), as its metadata reports them."""
        reading, read_at = self.state.alias_reading, self.state.alias_read_at
        return {
            "alias": self.state.alias,
            "alias_version": reading.version if reading else None,
            "alias_generation": reading.generation if reading else None,
            "alias_age_seconds": round(time.monotonic() - read_at, 3) if read_at is not None else None,
            "keys": [key_fingerprint(key) for key in self.state.signer.keys] if self.state.keyed else None,
        }

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

    def _metadata(self) -> ModelMetadata:
        state, model = self.state, self.state.model
        if model is None:
            return ModelMetadata(
                name=state.name, versions=[], parameters=self._why().model_copy(update=self._reading())
            )
        if model.columns:
            inputs = [
                TensorMetadata(name=n, datatype="BYTES" if text else "FP32", shape=[-1, 1]) for n, text in model.columns
            ]
        else:
            inputs = [TensorMetadata(name="input", datatype="FP32", shape=[-1, len(model.features)])]
        outputs = [
            TensorMetadata(name="label" if model.task == "classification" else "value", datatype="BYTES", shape=[-1])
        ]
        if model.classes:
            outputs.append(TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(model.classes)]))
        return ModelMetadata(
            name=model.name,
            versions=[model.version],
            inputs=inputs,
            outputs=outputs,
            parameters=ModelParameters(
                **self._reading(),
                uri=model.uri,
                task=model.task,
                features=model.features,
                classes=model.classes,
                metrics=model.metadata.get("metrics", {}),
            ),
        )

    def _post(self, request: Request) -> Response:
        path = request.path
        if not self.inference:
            raise BadRequest(f"no such endpoint on the metrics port: POST {path}", 404)
        if self.state.shadow is not None and not ShadowKey(*self.state.signer.keys).admits(
            request.headers.get(PASS_HEADER)
        ):
            raise BadRequest("a shadow pod answers only the requests the stable pods mirror to it", 403)
        if path.startswith("/v2/models/"):
            protocol = "v2"
            rest = self._model_path(path[len("/v2/models/") :])
            if rest == "/feedback":
                return self._feedback(request)
            if rest != "/infer":
                raise BadRequest(f"no such endpoint: POST {path}", 404)
        elif path == f"/v1/models/{self.state.name}:predict":
            protocol = "v1"
        elif path.startswith("/v1/models/") and path.endswith(":predict"):
            raise BadRequest(f"model {path[len('/v1/models/') : -len(':predict')]} is not served here", 404)
        else:
            raise BadRequest(f"no such endpoint: POST {path}", 404)
        return self._infer(protocol, request)

    def _infer(self, protocol: str, request: Request) -> Response:
        state = self.state
        model, metrics = state.model, state.metrics
        if model is None or metrics is None:
            raise BadRequest(f"the model is not ready: {state.error}", 503)
        code, x, binary_outputs, predicted = 500, None, b"", None
        refusal: Refusal = "malformed"
        try:
            self._shed()
            body, binary = split_binary(request.body, request.headers.get(BINARY_HEADER))
            parsed = parse_json(body)
            x = self._inputs(protocol, parsed, binary)
            keys = business_keys(parsed, rows(x))
            if protocol == "v2":
                prediction = model.session.predict(x)
                outputs, binary_outputs = requested_outputs(parsed, v2_outputs(prediction))
                response: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                                            "outputs": outputs}  # fmt: skip
                if isinstance(parsed.get("id"), str):
                    response["id"] = parsed["id"]
            else:
                prediction = model.session.predict(x)
                response = {"predictions": v1_predictions(prediction), "model_version": model.version}
            predicted = prediction.outputs
            if state.shadow is not None:  # mirrored: the predictions alone, logged nowhere
                code = 200
                return json_response(200, {"model_version": model.version, "predictions": v1_predictions(prediction)})
            if state.predictions is not None and state.predictions.sampled():
                token = state.signer.issue(
                    model.version, rows(x), time.time(), v1_predictions(prediction), state.issuer
                )
                issued = log_prediction(state.predictions, token, x, prediction, model.features, keys)
                if protocol == "v2":
                    response["parameters"] = {"prediction_id": issued}
                else:
                    response["prediction_id"] = issued
            code = 200
            if state.mirror is not None:
                binary_header = request.headers.get(BINARY_HEADER)
                state.mirror.sample(len(request.body), lambda: Mirrored(request.path, request.body, binary_header,
                                                                        v1_predictions(prediction)))  # fmt: skip
            return binary_response(response, binary_outputs) if binary_outputs else json_response(200, response)
        except BadRequest as error:
            code, x, refusal = error.status, None, error.reason
            raise
        finally:
            metrics.request(protocol, code, time.perf_counter() - request.started, x, predicted, refusal)

    def _shed(self) -> None:
        """A 429 for a request that waited too long behind others: it costs little, so the loop catches up."""
        waited = self.state.waited()
        if waited > self.state.shed_after:
            raise BadRequest(f"the server is overloaded (this request waited {waited:.2f} s): retry", 429, "overloaded")

    def _inputs(self, protocol: str, parsed: Any, binary: bytes) -> Batch:
        """The request's rows: a float matrix, or one column per input for a model that takes columns."""
        model, most = self.state.model, self.state.max_rows
        assert model is not None
        if protocol == "v2":
            if model.columns:
                return v2_columns(parsed, model.columns, binary, most)
            return v2_inputs(parsed, model.features, binary, most)
        return v1_columns(parsed, model.columns, most) if model.columns else v1_inputs(parsed, model.features, most)

    def _feedback(self, request: Request) -> Response:
        """Labels for logged predictions, all or none: {"id": <prediction_id>, "label": ...} or
        {"feedback": [such objects]} (see regrow.serving.feedback). Shed under load as inference is, and timed
        (``regrow_feedback_request_duration_seconds``), since checking a thousand ids takes the loop a while."""
        state = self.state
        predictions, counts, model = state.predictions, state.feedback, state.model
        if predictions is None or counts is None or model is None:
            raise BadRequest("feedback needs the prediction log (spec.predictionLog.samplePercent above 0)", 404)
        classes = model.classes if model.task == "classification" else None
        began = time.perf_counter()
        try:
            try:
                self._shed()
                if state.feedback_share.exhausted():
                    raise BadRequest("feedback has taken its share of this server for now: retry", 429, "overloaded")
                who = state.labellers.who(request.headers.get(LABELLER_HEADER))
                repeated = state.recent.repeated
                items = parse_feedback(parse_json(request.body), state.signer, classes, time.time(),
                                       state.label_horizon, recent=state.recent, labeller=who)  # fmt: skip
            except (Rejected, BadRequest) as error:
                counts.add(model.version, "rejected", error.reason)
                raise BadRequest(str(error), error.status) from None
            if not predictions.offer_all("feedback", [(feedback_folder(i.claims), i.record) for i in items]):
                for item in items:
                    counts.add(item.claims.version, "dropped", "queue_full")
                raise BadRequest("the feedback queue is full: send the request again later", 503)
            state.recent.remember(items)
            for item in items:
                counts.add(item.claims.version, "accepted", "ok")
            repeats = state.recent.repeated - repeated
            if repeats:
                counts.add(model.version, "repeated", "ok", repeats)
            return json_response(202, {"accepted": len(items) + repeats, "repeated": repeats})
        finally:
            counts.latency.observe(time.perf_counter() - request.started)
            state.feedback_share.charge(time.perf_counter() - began)


def _since(query: str) -> int:
    """``since`` of a quality query: unix seconds, an integer."""
    given = urllib.parse.parse_qs(query).get("since", [])
    if len(given) != 1 or not (given[0].isascii() and given[0].isdigit()) or len(given[0]) > 12:
        raise BadRequest("give since=<unix seconds>: the ids issued from then on are summed")
    return int(given[0])


def binary_response(header: dict[str, Any], data: bytes) -> Response:
    """The JSON header, then the binary tensor data; the Inference-Header-Content-Length header splits them."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(200, head + data, b"application/octet-stream", b"%s: %d\r\n" % (BINARY_HEADER, len(head)))


def _nulls(values: npt.NDArray[Any]) -> list[Any]:
    """Values as JSON: a missing one (NaN, or the empty category) as null."""
    out = values.astype(object)
    out[missing(values)] = None
    return out.tolist()  # type: ignore[no-any-return]


def log_prediction(predictions: PredictionLog, prediction_id: str, x: Batch, prediction: Prediction,
                   names: list[str] | None = None, keys: list[str] | None = None) -> str:  # fmt: skip
    """Queue one request's inputs and outputs under the id the server issued; return the id. Inputs are rows
    (``inputs``), or for a model that takes columns, columns by name (``columns``); the request's business
    ``keys`` by their hashes (``keys``)."""
    record: dict[str, Any] = {"id": prediction_id, "time": time.time()}
    if keys is not None:
        record["keys"] = [business_key_hash(key) for key in keys]
    if isinstance(x, list):
        record["columns"] = {name: _nulls(column) for name, column in zip(names or [], x, strict=True)}
    else:
        record["inputs"] = _nulls(x)
    record["outputs"] = v1_predictions(prediction)
    if prediction.probabilities is not None:
        record["probabilities"] = prediction.probabilities.tolist()
    predictions.offer("predictions", record)
    return prediction_id
