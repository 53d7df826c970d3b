"""describe(): the summary behind `onnxstitch inspect` and the demo report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from _files_models import make_model
from onnx import helper, numpy_helper

from onnxstitch import _meta, files
from onnxstitch.files.describe import SHARED, UNASSIGNED, describe, describe_file

KEYS = [
    "file", "ir_version", "opsets", "producer", "source", "inputs", "outputs", "batching", "nodes",
    "op_types", "parameters", "parameter_bytes", "layouts", "parts", "precision", "metadata",
    "graph",
]  # fmt: skip


def merged_model() -> onnx.ModelProto:
    """A hand-built 'merged' model: parts a (Conv) and b (MatMul+Add), a shared weight, one stray node."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "a/conv.w"),
        numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "b/fc.w"),
        numpy_helper.from_array(np.ones((5,), np.float32), "shared/bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "a/conv.w"], ["a/feat"], pads=[1, 1, 1, 1], name="a/conv"),
        helper.make_node("ReduceMean", ["a/feat"], ["a/pooled"], axes=[2, 3], keepdims=0, name="a/pool"),
        helper.make_node("Add", ["a/pooled", "a/pooled"], ["a/pooled2"], name="a/add"),
        helper.make_node("MatMul", ["a/pooled2", "b/fc.w"], ["b/h"], name="b/fc"),
        helper.make_node("Add", ["b/h", "shared/bias"], ["logits"], name="b/bias"),
        helper.make_node("Add", ["logits", "shared/bias"], ["logits2"], name="a/extra"),
        helper.make_node("Identity", ["logits2"], ["out"], name="stray"),
    ]
    for node, part in zip(nodes, ["a", "a", "a", "b", "b", "a", None], strict=True):
        if part:
            _meta.set_prop(node, _meta.PART, part)
    graph = helper.make_graph(
        nodes,
        "merged",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    m.producer_name, m.producer_version = "onnxstitch", "0.1.0"
    _meta.set_prop(m, _meta.SOURCE, "merged")
    _meta.set_prop(m, _meta.PARTS, json.dumps(["a", "b"]))
    _meta.set_layout(m, "image", "NCHW")
    _meta.set_prop(m, "author", "tests")
    return m


def test_simple_model_summary(tmp_path: Path) -> None:
    m = make_model()
    s = describe(m)
    assert list(s) == KEYS
    assert s["file"] is None
    assert s["ir_version"] == 10 and s["opsets"] == {"ai.onnx": 18}
    assert s["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 16], "layout": None}]
    assert s["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 16], "layout": None}]
    assert s["nodes"] == 2 and s["op_types"] == {"Add": 1, "MatMul": 1}
    assert s["parameters"] == 16 * 16 + 16 and s["parameter_bytes"] == 4 * (16 * 16 + 16)
    assert s["parts"] == [] and s["source"] is None and s["metadata"] == {}
    json.dumps(s)  # JSON-able


def test_merged_model_breakdown_by_part() -> None:
    m = merged_model()
    before = m.SerializeToString()
    s = describe(m)
    assert m.SerializeToString() == before
    assert s["source"] == "merged" and s["layouts"] == {"image": "NCHW"}
    assert s["inputs"][0]["layout"] == "NCHW" and s["inputs"][0]["shape"] == ["batch", 3, 8, 8]
    assert s["producer"] == {"name": "onnxstitch", "version": "0.1.0"}
    assert s["metadata"] == {"author": "tests"}
    assert s["parameters"] == 4 * 3 * 3 * 3 + 4 * 5 + 5
    assert s["parts"] == [
        {"part": "a", "nodes": 4, "parameters": 108, "op_types": {"Add": 2, "Conv": 1, "ReduceMean": 1}},
        {"part": "b", "nodes": 2, "parameters": 20, "op_types": {"MatMul": 1, "Add": 1}},
        {"part": UNASSIGNED, "nodes": 1, "parameters": 0, "op_types": {"Identity": 1}},
        {"part": SHARED, "nodes": 0, "parameters": 5, "op_types": {}},
    ]
    assert sum(r["parameters"] for r in s["parts"]) == s["parameters"]
    assert sum(r["nodes"] for r in s["parts"]) == s["nodes"]


def test_describe_file_reports_sizes(tmp_path: Path) -> None:
    target = files.save(make_model(), tmp_path / "m.onnx", external_data=True)
    s = describe_file(target)
    assert s["file"] == {
        "path": str(target),
        "size_bytes": target.stat().st_size,
        "external_data": [{"file": "m.onnx.data", "size_bytes": 1024}],
    }


def test_unknown_dims_and_non_tensor_types() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.INT64, None)
    x.type.tensor_type.shape.dim.add()  # a dim with neither value nor name
    seq = helper.make_tensor_sequence_value_info("s", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["f"], ["s"]), helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x, helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, [2])],
        [seq, helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    s = describe(m)
    assert s["inputs"][0] == {"name": "x", "dtype": "int64", "shape": [None], "layout": None}
    assert s["outputs"][0]["dtype"] == "sequence" and s["outputs"][0]["shape"] is None
    assert s["outputs"][1]["shape"] is None


def test_parameters_count_floating_point_weights_only() -> None:
    """Integer shape/index constants are not parameters; their bytes still count."""
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[batch, 4] x) => (float[batch, 2] y)
        <float[4, 2] w = {1, 2, 3, 4, 5, 6, 7, 8}, int64[2] shape = {-1, 2}> {
            m = MatMul (x, w)
            y = Reshape (m, shape)
        }"""
    )
    info = describe(model)
    assert info["parameters"] == 8
    assert info["parameter_bytes"] == 8 * 4 + 2 * 8
