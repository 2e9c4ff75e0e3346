"""Triton Python-backend twin of an onnxruntime_onnx model: the same model.onnx, run with the onnxruntime package.

``export twin`` copies this file as ``<model>/1/model.py``; it runs only inside Triton's Python backend.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs the requests of one ``execute`` call as one batch; a request that fails alone gets its own error."""

    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        parameters = json.loads(args["model_config"]).get("parameters", {})
        options = ort.SessionOptions()
        # the onnxruntime backend's own parameter; 0 (absent) is onnxruntime's default, all cores
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", {}).get("string_value", 0))
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _feeds(self, request) -> dict:
        return {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}

    def _response(self, arrays) -> "pb_utils.InferenceResponse":
        tensors = [pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(self.outputs, arrays, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        # the Python backend hands over the dynamic batcher's requests as a list, not concatenated: join them here
        feeds = [self._feeds(r) for r in requests]
        sizes = [len(f[self.inputs[0]]) for f in feeds]
        try:
            batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            results = self.session.run(self.outputs, batch)
        except Exception:  # e.g. one request's out-of-range id: run them one by one so only that one fails
            return [self._run_one(f) for f in feeds]
        cuts = np.cumsum(sizes)[:-1]
        parts = [np.split(r, cuts) for r in results]  # per output: one slice per request
        return [self._response([p[i] for p in parts]) for i in range(len(requests))]

    def _run_one(self, feeds: dict) -> "pb_utils.InferenceResponse":
        try:
            return self._response(self.session.run(self.outputs, feeds))
        except Exception as e:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {e}"))
