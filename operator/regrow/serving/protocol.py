"""Requests and responses of the Open Inference Protocol v2 (and the v1 predict protocol) as numpy.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/

Input tensors may also come in the binary tensor data extension that Triton's and KServe's clients use
by default: the body is the JSON request (``Inference-Header-Content-Length`` bytes long) followed by each
binary input's raw little-endian values, whose length the input's ``parameters.binary_data_size`` gives.
Outputs come back the same way when the request asks (Triton's client does unless told otherwise), else
as JSON; a request may also name the outputs it wants.

A model with categorical columns takes one input per column, named after it (``v2_columns``): ``BYTES`` for
a categorical one (in JSON: strings, booleans, whole numbers or null; in binary: each element's length as 4
little-endian bytes, then the element), any numeric datatype for a numeric one; each of shape [n] or [n, 1].
Values become canonical categories (``regrow.tabular``): an empty string or null is a missing value. A v1
request sends ``instances`` as objects ({"island": "Biscoe", "bill_length_mm": 39.1}: a key left out is a
missing value, an unknown key a 400) or as rows in the columns' order.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from regrow.contracts import MAX_BUSINESS_KEY
from regrow.inference import Columns, Prediction
from regrow.tabular import NotCategorical, canonical
from regrow.telemetry import Refusal

NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
BINARY_HEADER = b"inference-header-content-length"
TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data"})  # what every input tensor has


class BadRequest(Exception):
    """A request the client must fix; the message says how, and ``reason`` (for an inference request, the
    label it is counted under: see ``regrow.telemetry.Refusal``) what kind of fault it is."""

    def __init__(self, message: str, status: int = 400, reason: Refusal = "malformed") -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def split_binary(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    """The JSON request and the binary tensor data after it (empty without the extension's header)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(f"{BINARY_HEADER.decode()} must be the JSON header's length in bytes, at most the body's")
    return body[: int(header_length)], body[int(header_length) :]


def _parameters(obj: Any) -> dict[str, Any]:
    """The ``parameters`` object of a request, input or output ({} when it has none)."""
    parameters = obj.get("parameters", {}) if isinstance(obj, dict) else {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object')
    return parameters


def business_keys(parsed: Any, rows: int) -> list[str] | None:
    """The request's business keys (``parameters.business_key``): one per row, so that ground truth written to
    the store by that key labels the row; a string for a request of one row, else a list of as many. None when
    the request gives none."""
    given = _parameters(parsed).get("business_key")
    if given is None:
        return None
    keys = [given] if isinstance(given, str) and rows == 1 else given
    if (
        not isinstance(keys, list)
        or len(keys) != rows
        or not all(isinstance(k, str) and 0 < len(k) <= MAX_BUSINESS_KEY for k in keys)
    ):
        raise BadRequest(
            f"parameters.business_key must be a string of 1 to {MAX_BUSINESS_KEY} characters (a request of one "
            f"row), or a list of one such string per row ({rows})"
        )
    return keys


def _dtype(datatype: str) -> np.dtype[Any]:
    """The little-endian numpy type of a numeric OIP datatype (FP32, INT64, ...)."""
    return np.dtype(datatype.lower().replace("fp", "float")).newbyteorder("<")


def _checked(tensor: Any, text: bool = False) -> str:
    """The input's name, once it is an object with a string name, a shape and a numeric datatype (BYTES
    where ``text``: a categorical column's)."""
    if not isinstance(tensor, dict) or not tensor.keys() >= TENSOR_KEYS - {"data"}:
        raise BadRequest("each input needs name, shape, datatype and data")
    if not isinstance(tensor["name"], str):
        raise BadRequest("an input's name must be a string")
    datatype = tensor["datatype"]
    if text and datatype != "BYTES":
        raise BadRequest(f"input {tensor['name']} is categorical: its datatype must be BYTES", reason="columns")
    if not text and (not isinstance(datatype, str) or datatype not in NUMERIC):
        raise BadRequest(f"input {tensor['name']}: datatype must be one of {', '.join(sorted(NUMERIC))}")
    return str(tensor["name"])


def _elements(blob: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor's elements: each one's length as 4 little-endian bytes, then the element."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob) or at + 4 + (size := struct.unpack_from("<I", blob, at)[0]) > len(blob):
            raise BadRequest(f"input {name}: the BYTES data ends inside an element")
        out.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def _named_in(tensor: Any, names: frozenset[str]) -> bool:
    return isinstance(tensor, dict) and isinstance(tensor.get("name"), str) and tensor["name"] in names


def _binary_inputs(inputs: list[Any], binary: bytes, text: frozenset[str] = frozenset()) -> None:
    """Put each binary input's values in its ``data``, in the order the inputs come (``text``: the names of
    the BYTES inputs)."""
    offset = 0
    for tensor in inputs:
        name = _checked(tensor, _named_in(tensor, text))
        size = _parameters(tensor).get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input {name}: binary_data_size does not match the data sent")
        if tensor["datatype"] == "BYTES":
            tensor["data"] = _elements(binary[offset : offset + size], name)
            offset += size
            continue
        dtype = _dtype(tensor["datatype"])
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
            # None (JSON null) is a missing value, which the model's imputer fills; a number beyond float32
            # becomes inf, refused below.
            with np.errstate(over="ignore"):
                array = np.array(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadRequest(
                f"{what}: data must be numbers (or null for a missing value), nested regularly", reason="values"
            ) from None
    if np.count_nonzero(np.isinf(array)):
        raise BadRequest(f"{what}: data must be finite (use null for a missing value)", reason="values")
    return array


def _too_many(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise BadRequest(f"at most {max_rows} rows in one request: send {rows} as several", 413, "rows")


def v2_inputs(body: Any, features: list[str], binary: bytes, max_rows: int) -> npt.NDArray[np.float32]:
    """An (n, features) matrix from an OIP v2 request: one [n, features] tensor, or one tensor per feature;
    at most ``max_rows`` rows, judged from the shapes before any data is converted."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest('the request must be a JSON object with a non-empty "inputs" array')
    inputs = body["inputs"]
    if binary:
        _binary_inputs(inputs, binary)
    for tensor in inputs:
        name = _checked(tensor)
        if "data" not in tensor:
            raise BadRequest(f"input {name} needs name, shape, datatype and data")
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadRequest(f"input {name}: shape must be a list of non-negative integers")
        _too_many(shape[0] if len(inputs) == 1 and shape else math.prod(shape), max_rows)
    if len(inputs) == 1:
        tensor = inputs[0]
        array = _array(tensor["data"], f"input {tensor['name']}")
        shape = tensor["shape"]
        if array.size != math.prod(shape):
            raise BadRequest(f"input {tensor['name']}: {array.size} values do not fill shape {shape}", reason="columns")
        if len(shape) != 2 or shape[1] != len(features):
            raise BadRequest(
                f"input {tensor['name']}: shape must be [n, {len(features)}] (features: {', '.join(features)})",
                reason="columns",
            )
        return array.reshape(shape)
    by_name = {t["name"]: t for t in inputs}
    if sorted(by_name) != sorted(features):
        raise BadRequest(
            f"with one input per feature, the inputs must be exactly: {', '.join(features)}", reason="columns"
        )
    columns = [_array(by_name[f]["data"], f"input {f}").reshape(-1) for f in features]
    if len({c.size for c in columns}) != 1:
        raise BadRequest("every feature input must have the same number of rows", reason="columns")
    return np.column_stack(columns)


def _column(data: Any, name: str, text: bool, rows: int | None) -> npt.NDArray[Any]:
    """One column's values: canonical categories (``text``) or float32, shape [n] or [n, 1] flattened (a v1
    request's, without ``rows``, only [n]: one value per instance)."""
    values: npt.NDArray[Any]
    if text:
        if not isinstance(data, list):
            raise BadRequest(f"input {name}: data must be a JSON array")
        try:
            values = canonical(data)
        except (NotCategorical, ValueError) as error:
            why = f" ({error})" if isinstance(error, NotCategorical) else ""  # what, never the value
            raise BadRequest(f"input {name} is categorical: its values must be strings, booleans, whole numbers "
                             f"or null{why}", reason="values") from None  # fmt: skip
    else:
        values = _array(data, f"input {name}")
    if values.ndim > 2 or (values.ndim == 2 and (values.shape[1] != 1 or rows is None)):
        raise BadRequest(f"input {name}: a column's shape is [n] or [n, 1], with one value per row", reason="columns")
    values = values.reshape(-1)
    if rows is not None and len(values) != rows:
        raise BadRequest(f"input {name}: {len(values)} values do not fill its shape", reason="columns")
    return values


def v2_columns(body: Any, inputs: list[tuple[str, bool]], binary: bytes, max_rows: int) -> Columns:
    """One column per input of a model that takes a column each (``inputs``: each one's name, and whether it
    is categorical), from one tensor per column named after it."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest('the request must be a JSON object with a non-empty "inputs" array')
    text = frozenset(name for name, categorical in inputs if categorical)
    tensors = body["inputs"]
    if binary:
        _binary_inputs(tensors, binary, text)
    by_name: dict[str, Any] = {}
    for tensor in tensors:
        name = _checked(tensor, _named_in(tensor, text))
        shape = tensor["shape"]
        if "data" not in tensor or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadRequest(f"input {name} needs data and a shape of non-negative integers")
        if len(shape) not in (1, 2) or shape[1:] not in ([], [1]):
            raise BadRequest(f"input {name}: a column's shape is [n] or [n, 1]", reason="columns")
        _too_many(shape[0], max_rows)
        by_name[name] = tensor
    names = [name for name, _ in inputs]
    if set(by_name) != set(names):
        raise BadRequest(f"the inputs must be one per column, exactly: {', '.join(names)}", reason="columns")
    columns = [_column(by_name[n]["data"], n, n in text, math.prod(by_name[n]["shape"])) for n in names]
    if len({len(c) for c in columns}) != 1:
        raise BadRequest("every column must have the same number of rows", reason="columns")
    return columns


def v1_columns(body: Any, inputs: list[tuple[str, bool]], max_rows: int) -> Columns:
    """One column per input from a v1 request's ``instances``: objects by column name, or rows in order."""
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequest('the request must be a JSON object with a non-empty "instances" array')
    _too_many(len(instances), max_rows)
    names = [name for name, _ in inputs]
    if all(isinstance(i, dict) for i in instances):
        unknown = sorted({k for i in instances for k in i} - set(names))
        if unknown:
            raise BadRequest(f"instances name unknown columns ({', '.join(map(str, unknown[:5]))}); the columns "
                             f"are: {', '.join(names)}", reason="columns")  # fmt: skip
        table = [[i.get(n) for i in instances] for n in names]
    elif all(isinstance(i, list) and len(i) == len(names) for i in instances):
        table = [list(column) for column in zip(*instances, strict=True)]
    else:
        raise BadRequest(f"instances must be objects by column name, or rows of {len(names)} values "
                         f"({', '.join(names)})", reason="columns")  # fmt: skip
    return [_column(values, name, text, None) for values, (name, text) in zip(table, inputs, strict=True)]


def v1_inputs(body: Any, features: list[str], max_rows: int) -> npt.NDArray[np.float32]:
    """An (n, features) matrix from a v1 predict request: {"instances": [[...], ...]}, at most ``max_rows``."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest('the request must be a JSON object with an "instances" array')
    if isinstance(body["instances"], list):
        _too_many(len(body["instances"]), max_rows)
    array = _array(body["instances"], "instances")
    if array.ndim != 2 or array.shape[1] != len(features):
        raise BadRequest(
            f"instances must be rows of {len(features)} numbers (features: {', '.join(features)})", reason="columns"
        )
    return array


def _labels(outputs: npt.NDArray[np.generic]) -> tuple[list[Any], str]:
    if outputs.dtype.kind in "OU":  # onnxruntime returns string tensors as arrays of str
        return outputs.tolist(), "BYTES"
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
                        "data": probabilities.ravel()})  # fmt: skip
    return outputs


def requested_outputs(body: dict[str, Any], outputs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bytes]:
    """The outputs a v2 request asks for (all when it names none), and the binary data of those wanted binary.

    Per the binary tensor data extension, an output's ``parameters.binary_data`` asks for its values as raw
    little-endian bytes after the JSON (BYTES: each element's length as 4 bytes, then the element), and
    the request's ``parameters.binary_data_output`` is the default, which Triton's client sends."""
    default = _parameters(body).get("binary_data_output") is True
    asked = body.get("outputs")
    if asked is None:
        if not default:  # the usual request: every output, as JSON
            return outputs, b""
        chosen = [(output, True) for output in outputs]
    else:
        if not isinstance(asked, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) for a in asked
        ):
            raise BadRequest('"outputs" must be a list of objects with a "name"')
        by_name = {output["name"]: output for output in outputs}
        for wanted in asked:
            if wanted["name"] not in by_name:
                raise BadRequest(f"there is no output {wanted['name']} (outputs: {', '.join(by_name)})")
        chosen = [(by_name[a["name"]], _parameters(a).get("binary_data", default) is True) for a in asked]
    selected, blobs = [], []
    for output, binary in chosen:
        if binary:
            blobs.append(_tensor_bytes(output))
            selected.append({**{k: v for k, v in output.items() if k != "data"},
                             "parameters": {"binary_data_size": len(blobs[-1])}})  # fmt: skip
        else:
            selected.append(output)
    return selected, b"".join(blobs)


def _tensor_bytes(output: dict[str, Any]) -> bytes:
    if output["datatype"] == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in output["data"]))
    return np.asarray(output["data"], dtype=_dtype(output["datatype"])).tobytes()


def v1_predictions(prediction: Prediction) -> list[Any]:
    return _labels(prediction.outputs)[0]
