"""Run an exported model with onnxruntime: the trainer's parity check and gate, and the server."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

INPUT_NAME = "input"


@dataclass(slots=True)
class Prediction:
    """What a model returns for a batch: labels (classifiers) or values (regressors), and probabilities."""

    outputs: npt.NDArray[np.generic]
    probabilities: npt.NDArray[np.float32] | None


class OnnxModel:
    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        self.n_features = int(shape[1])

    def predict(self, x: npt.ArrayLike) -> Prediction:
        batch = np.ascontiguousarray(x, dtype=np.float32)
        results = self.session.run(self.output_names, {INPUT_NAME: batch})
        if len(results) == 2:  # classifier: label, probabilities
            return Prediction(np.asarray(results[0]), np.asarray(results[1], dtype=np.float32))
        return Prediction(np.asarray(results[0]).reshape(-1), None)
