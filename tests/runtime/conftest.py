"""Tiny models shared by the runtime tests (ONNX text or onnx.helper; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, parser

ADD_MODEL = """
<ir_version: 8, opset_import: ["" : 18]>
addg (float[batch, 3] x, float[batch, 3] y, int64[batch, seq] t) => (float[batch, 3] z, int64[batch, seq] u) {
  z = Add(x, y)
  u = Identity(t)
}
"""

# a small MLP: weights fixed (seeded) so numpy can serve as the reference
_W = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
_B = np.random.default_rng(2).standard_normal(5).astype(np.float32)


def mlp_reference(x: np.ndarray) -> np.ndarray:
    """What the MLP model computes, in numpy."""
    return np.maximum(x @ _W + _B, 0).astype(np.float32)


def make_mlp() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=[onnx.numpy_helper.from_array(_W, "W"), onnx.numpy_helper.from_array(_B, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def make_slow() -> onnx.ModelProto:
    """A Loop of ``n`` Tanh steps over a 64x64 tensor: as slow as ``n`` asks."""
    f, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Tanh", ["acc"], ["acc_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", i64, []),
            helper.make_tensor_value_info("c", b, []),
            helper.make_tensor_value_info("acc", f, [64, 64]),
        ],
        [
            helper.make_tensor_value_info("c_out", b, []),
            helper.make_tensor_value_info("acc_out", f, [64, 64]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("v", b, [], [True])),
            helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body),
        ],
        "slow",
        [helper.make_tensor_value_info("x", f, [64, 64]), helper.make_tensor_value_info("n", i64, [])],
        [helper.make_tensor_value_info("y", f, [64, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="session")
def add_model() -> onnx.ModelProto:
    return parser.parse_model(ADD_MODEL)


@pytest.fixture(scope="session")
def mlp_model() -> onnx.ModelProto:
    return make_mlp()


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture(scope="session")
def add_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "add.onnx"
    onnx.save(parser.parse_model(ADD_MODEL), str(path))
    return path


@pytest.fixture(scope="session")
def slow_model() -> onnx.ModelProto:
    return make_slow()


@pytest.fixture(scope="session")
def mlp_ref() -> object:
    return mlp_reference


@pytest.fixture
def cuda() -> None:
    """Skips the test unless onnxruntime's CUDA provider and a CUDA torch are both usable."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu on a GPU machine)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
