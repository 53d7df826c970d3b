"""Past protobuf's 2 GB limit for real: needs ~5 GB of RAM and disk, so it runs on request only.

Run with ``ONNXSTITCH_BIG_TESTS=1 python3 -m pytest tests/files/test_files_big.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxstitch import files
from onnxstitch.errors import ModelTooLargeError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("ONNXSTITCH_BIG_TESTS"), reason="set ONNXSTITCH_BIG_TESTS=1 (5 GB)"
    ),
]

ELEMENTS = 180 * 1024 * 1024  # 720 MiB of float32 per tensor, three of them: 2.1 GiB


def _big_model() -> onnx.ModelProto:
    nodes, current = [], "x"
    graph = helper.make_graph([], "big", [helper.make_tensor_value_info("x", 1, [ELEMENTS])], [])
    for i in range(3):
        t = graph.initializer.add()
        t.name, t.data_type = f"w{i}", onnx.TensorProto.FLOAT
        t.dims.append(ELEMENTS)
        t.raw_data = np.full(ELEMENTS, i + 1, np.float32).tobytes()
        nodes.append(helper.make_node("Add", [current, t.name], [f"t{i}"]))
        current = f"t{i}"
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(current, 1, [ELEMENTS]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_past_2gb_goes_to_external_data_automatically(tmp_path: Path) -> None:
    model = _big_model()
    assert sum(4 * t.dims[0] for t in model.graph.initializer) > 2**31
    with pytest.raises(ModelTooLargeError, match="past protobuf's 2 GB limit"):
        files.save(model, tmp_path / "inline.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []
    target = files.save(model, tmp_path / "big.onnx", manifest=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "big.onnx.sha256.json"]
    assert target.stat().st_size < 10_000
    assert (tmp_path / "big.onnx.data").stat().st_size >= 3 * 4 * ELEMENTS
    del model
    loaded = files.load(target, verify=True)
    assert [t.raw_data[:4] for t in loaded.graph.initializer] == [np.float32(v).tobytes() for v in (1, 2, 3)]
