"""Run an exported model with onnxruntime: the trainer's parity check and gate, and the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

INPUT_NAME = "input"


@dataclass(slots=True)
class Prediction:
    """What a model returns for a batch: labels (classifiers) or values (regressors), and probabilities."""

    outputs: npt.NDArray[np.generic]
    probabilities: npt.NDArray[np.float32] | None


Columns = list[npt.NDArray[Any]]  # one per input of a model that takes a column each, in its inputs' order
Batch = npt.NDArray[Any] | Columns  # a request's rows, either way


def rows(x: Batch) -> int:
    """The rows of a batch: a matrix's, or its columns'."""
    return len(x[0]) if isinstance(x, list) else len(x)


class OnnxModel:
    """An exported model: either one float input ``input`` of shape [n, features] (an all-numeric model), or
    one input per column, named after it, of shape [n, 1]: strings (canonical categories, see
    ``regrow.tabular``) or floats."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        inputs = self.session.get_inputs()
        self.columns = not (len(inputs) == 1 and inputs[0].name == INPUT_NAME)
        # Each input's name, and whether it takes strings: a column model's categorical columns.
        self.inputs = [(i.name, i.type == "tensor(string)") for i in inputs]
        self.n_features = len(inputs) if self.columns else int(inputs[0].shape[1])

    def predict(self, x: npt.ArrayLike | Columns) -> Prediction:
        if self.columns:
            if isinstance(x, np.ndarray) and x.ndim == 2:  # a table: a column per input, in order
                x = list(x.T)
            if not isinstance(x, list) or len(x) != len(self.inputs):
                raise ValueError(f"this model takes {len(self.inputs)} columns")
            feeds = {
                name: np.asarray(column, dtype=object if text else np.float32).reshape(-1, 1)
                for (name, text), column in zip(self.inputs, x, strict=True)
            }
        else:
            feeds = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
        results = self.session.run(self.output_names, feeds)
        if len(results) == 2:  # classifier: label, probabilities
            return Prediction(np.asarray(results[0]), np.asarray(results[1], dtype=np.float32))
        return Prediction(np.asarray(results[0]).reshape(-1), None)
