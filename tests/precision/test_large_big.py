"""``quantize`` past protobuf's 2 GB limit for real: 2.4 GB of float32 weights, so it runs on request.

Needs ~16 GB of RAM and ~25 GB of free disk. Run with
``ONNXSTITCH_BIG_TESTS=1 python3 -m pytest tests/precision/test_large_big.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxstitch as ox
from onnxstitch.precision import _large, part_precisions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("ONNXSTITCH_BIG_TESTS"), reason="set ONNXSTITCH_BIG_TESTS=1 (16 GB RAM)"
    ),
]

WIDTH = 8192  # one [8192, 8192] float32 weight is 256 MiB
LAYERS = 9  # 2.42 GB in all


def _big_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [], "big_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])], []
    )
    current = "x"
    for i in range(LAYERS):
        t = graph.initializer.add()
        t.name, t.data_type = f"w{i}", TensorProto.FLOAT
        t.dims.extend([WIDTH, WIDTH])
        scale = np.float32(np.sqrt(2.0 / WIDTH))
        t.raw_data = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * scale).tobytes()
        graph.node.append(helper.make_node("MatMul", [current, t.name], [f"m{i}"], name=f"matmul{i}"))
        last = i == LAYERS - 1
        if not last:
            graph.node.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
        current = f"m{i}" if last else f"r{i}"
    graph.output.append(helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", WIDTH]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_static_int8_of_a_model_past_2gb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user, scratch = tmp_path / "user", tmp_path / "scratch"
    user.mkdir()
    scratch.mkdir()
    model = _big_mlp()
    assert _large.is_large(model) and sum(4 * WIDTH * WIDTH for _ in range(LAYERS)) > 2**31
    ox.save(model, user / "big.onnx")  # past 2 GB: external data by itself
    del model
    assert sorted(p.name for p in user.iterdir()) == ["big.onnx", "big.onnx.data"]
    sizes = {p.name: p.stat().st_size for p in user.iterdir()}
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    x = np.random.default_rng(1).random((16, WIDTH), dtype=np.float32)

    result = ox.quantize(user / "big.onnx", {"x": x}, parts={"model": "int8"}, rtol=0.1, min_agreement=0.75)

    assert {p.name: p.stat().st_size for p in user.iterdir()} == sizes
    assert list(scratch.iterdir()) == []
    assert part_precisions(result) == {"model": "int8"}
    weights = [t for t in result.graph.initializer if t.data_type == TensorProto.INT8]
    assert sum(len(t.raw_data) for t in weights) >= LAYERS * WIDTH * WIDTH  # int8 weights, in memory
    assert result.ByteSize() < 2**31 - 1  # a quarter of the float model: one protobuf again
    onnx.checker.check_model(result, full_check=True)
    got = ox.Session(result, device="cpu").run({"x": x[:4]})
    want = ox.Session(user / "big.onnx", device="cpu").run({"x": x[:4]})
    (name,) = want
    assert np.abs(got[name] - want[name]).max() <= 0.1 * np.abs(want[name]).max()
