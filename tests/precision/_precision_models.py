"""The precision tests' data and model: 8x8 images of 10 classes, and the hybrid (a Keras CNN
backbone chained into a torch MLP head) that ``conftest.py`` builds once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Hybrid:
    """The merged model, its input name, and the native chain (Keras, then torch) as a reference."""

    model: onnx.ModelProto
    input: str
    reference: Callable[[np.ndarray], np.ndarray]


_CENTERS = [
    (1.5, 1.5),
    (1.5, 3.5),
    (1.5, 5.5),
    (3.5, 1.5),
    (3.5, 3.5),
    (3.5, 5.5),
    (5.5, 1.5),
    (5.5, 3.5),
    (5.5, 5.5),
    (3.5, 3.5),
]
RIDGE = 1e-3
_WIDTHS = [3.0] * 9 + [12.0]  # class 9: one wide blob in the middle


def images(n: int, seed: int, *, labels: bool = False) -> Any:
    """``n`` 8x8x1 images in [0, 1] (NHWC) of 10 classes: a blob at a class's place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    yy, xx = np.mgrid[0:8, 0:8]
    centers = np.array(_CENTERS)[y][:, :, None, None] + rng.normal(0, 0.4, size=(n, 2, 1, 1))
    width = np.array(_WIDTHS)[y][:, None, None]
    blobs = np.exp(-((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) / width)
    x = np.clip(blobs + 0.1 * rng.standard_normal((n, 8, 8)), 0, 1).astype(np.float32)[..., None]
    return (x, y) if labels else x


def mlp(hidden: int, *, names: bool, out: int = 10) -> onnx.ModelProto:
    """x [batch, hidden] -> MatMul -> Relu -> MatMul -> y [batch, out]; named nodes or not."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, out)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1" if names else ""),
        helper.make_node("Relu", ["h"], ["r"], name="relu" if names else ""),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2" if names else ""),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
