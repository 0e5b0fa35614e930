"""Requests and responses of the Open Inference Protocol v2 (and the v1 predict protocol) as numpy.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/

Input tensors may also come in the binary tensor data extension that Triton's and KServe's clients use
by default: the body is the JSON request (``Inference-Header-Content-Length`` bytes long) followed by each
binary input's raw little-endian values, whose length the input's ``parameters.binary_data_size`` gives.
Responses are always JSON, which those clients read as well.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.inference import Prediction

NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
BINARY_HEADER = b"inference-header-content-length"


class BadRequest(Exception):
    """A request the client must fix; the message says how."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_binary(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    """The JSON request and the binary tensor data after it (empty without the extension's header)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(f"{BINARY_HEADER.decode()} must be the JSON header's length in bytes, at most the body's")
    return body[: int(header_length)], body[int(header_length) :]


def _binary_inputs(inputs: list[Any], binary: bytes) -> None:
    """Put each binary input's values in its ``data``, in the order the inputs come."""
    offset = 0
    for tensor in inputs:
        size = ((tensor.get("parameters") or {}) if isinstance(tensor, dict) else {}).get("binary_data_size")
        if size is None:
            continue
        if tensor.get("datatype") not in NUMERIC or not isinstance(size, int) or offset + size > len(binary):
            raise BadRequest(f"input {tensor.get('name')}: binary_data_size does not match the numeric data sent")
        dtype = np.dtype(tensor["datatype"].lower().replace("fp", "float")).newbyteorder("<")
        if size % dtype.itemsize:
            raise BadRequest(f"input {tensor['name']}: {size} bytes are not whole {tensor['datatype']} values")
        tensor["data"] = np.frombuffer(binary, dtype, size // dtype.itemsize, offset)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")


def _array(data: Any, what: str) -> npt.NDArray[np.float32]:
    if isinstance(data, np.ndarray):  # binary data
        array = data.astype(np.float32)
    elif not isinstance(data, list):
        raise BadRequest(f"{what}: data must be a JSON array")
    else:
        try:
            # None (JSON null) is a missing value, which the model's imputer fills.
            array = np.array(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadRequest(f"{what}: data must be numbers (or null for a missing value), nested regularly") from None
    if np.count_nonzero(np.isinf(array)):
        raise BadRequest(f"{what}: data must be finite (use null for a missing value)")
    return array


def v2_inputs(body: Any, features: list[str], binary: bytes = b"") -> npt.NDArray[np.float32]:
    """An (n, features) matrix from an OIP v2 request: one [n, features] tensor, or one tensor per feature."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest('the request must be a JSON object with a non-empty "inputs" array')
    inputs = body["inputs"]
    if binary:
        _binary_inputs(inputs, binary)
    for tensor in inputs:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= tensor.keys():
            raise BadRequest("each input needs name, shape, datatype and data")
        if tensor["datatype"] not in NUMERIC:
            raise BadRequest(f"input {tensor['name']}: datatype {tensor['datatype']} is not numeric")
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(f"input {tensor['name']}: shape must be a list of non-negative integers")
    if len(inputs) == 1:
        tensor = inputs[0]
        array = _array(tensor["data"], f"input {tensor['name']}")
        shape = tensor["shape"]
        if array.size != math.prod(shape):
            raise BadRequest(f"input {tensor['name']}: {array.size} values do not fill shape {shape}")
        if len(shape) != 2 or shape[1] != len(features):
            raise BadRequest(
                f"input {tensor['name']}: shape must be [n, {len(features)}] (features: {', '.join(features)})"
            )
        return array.reshape(shape)
    by_name = {t["name"]: t for t in inputs}
    if sorted(by_name) != sorted(features):
        raise BadRequest(f"with one input per feature, the inputs must be exactly: {', '.join(features)}")
    columns = [_array(by_name[f]["data"], f"input {f}").reshape(-1) for f in features]
    if len({c.size for c in columns}) != 1:
        raise BadRequest("every feature input must have the same number of rows")
    return np.column_stack(columns)


def v1_inputs(body: Any, features: list[str]) -> npt.NDArray[np.float32]:
    """An (n, features) matrix from a v1 predict request: {"instances": [[...], ...]}."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest('the request must be a JSON object with an "instances" array')
    array = _array(body["instances"], "instances")
    if array.ndim != 2 or array.shape[1] != len(features):
        raise BadRequest(f"instances must be rows of {len(features)} numbers (features: {', '.join(features)})")
    return array


def _labels(outputs: npt.NDArray[np.generic]) -> tuple[list[Any], str]:
    if outputs.dtype.kind in "USO":
        return [str(v) for v in outputs.tolist()], "BYTES"
    if outputs.dtype.kind in "iu":
        return outputs.astype(np.int64).tolist(), "INT64"
    return outputs.astype(np.float64).tolist(), "FP64"


def v2_outputs(prediction: Prediction) -> list[dict[str, Any]]:
    """The response's output tensors; FP32 data stays a numpy array, which orjson writes as float32."""
    values, datatype = _labels(prediction.outputs)
    name = "label" if prediction.probabilities is not None else "value"
    outputs: list[dict[str, Any]] = [{"name": name, "shape": [len(values)], "datatype": datatype, "data": values}]
    if prediction.probabilities is not None:
        probabilities = prediction.probabilities
        outputs.append({"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32",
                        "data": np.ascontiguousarray(probabilities).ravel()})  # fmt: skip
    return outputs


def v1_predictions(prediction: Prediction) -> list[Any]:
    return _labels(prediction.outputs)[0]
