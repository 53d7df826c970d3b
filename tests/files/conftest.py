"""Fixtures of the files tests: tiny real ONNX models written to tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
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


@pytest.fixture
def model() -> onnx.ModelProto:
    return make_model()


@pytest.fixture
def external_model(tmp_path: Path) -> Callable[..., Path]:
    """Write a model whose ``w`` lives in ``data_name`` (raw float32 bytes), with any ``location``."""

    def write(
        *,
        folder: Path | None = None,
        location: str = "w.bin",
        data_name: str | None = "w.bin",
        offset: str | None = "0",
        length: str | None = None,
    ) -> Path:
        folder = folder or tmp_path / "model"
        folder.mkdir(parents=True, exist_ok=True)
        m = make_model()
        w = m.graph.initializer[0]
        raw = w.raw_data
        if data_name is not None:
            (folder / data_name).write_bytes(raw)
        w.ClearField("raw_data")
        w.data_location = onnx.TensorProto.EXTERNAL
        entries = {"location": location, "offset": offset, "length": length or str(len(raw))}
        for key, value in entries.items():
            if value is not None:
                e = w.external_data.add()
                e.key, e.value = key, value
        target = folder / "m.onnx"
        target.write_bytes(m.SerializeToString())
        return target

    return write
