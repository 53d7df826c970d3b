"""Tiny real ONNX models shared by the files tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def make_model(*, n: int = 16, seed: int = 0, opset: int = 18, ir_version: int = 10) -> onnx.ModelProto:
    """``y = x @ w + b`` with a symbolic batch dim; ``w`` is n*n float32 (1 KiB for n=16)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((n,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", n])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
