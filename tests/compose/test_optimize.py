"""optimize(): seams cleaned, signature / metadata / provenance kept, input never mutated."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxstitch import _meta
from onnxstitch.compose import _optimize
from onnxstitch.compose._optimize import optimize
from onnxstitch.errors import MissingDependencyError, StitchError, ValidationError

# a Keras-like NHWC trunk (Transpose -> Conv -> Transpose back) wired into a torch-like NCHW head
# through the seam Transpose the composer inserts: Transpose(0,2,3,1) then Transpose(0,3,1,2).
MERGED = """
<ir_version: 8, opset_import: ["" : 18]>
merged (float[batch,6,6,3] image) => (float[batch,10] logits)
{
  t0 = Transpose<perm=[0,3,1,2]>(image)
  c1 = Conv<pads=[1,1,1,1]>(t0, w1, b1)
  r1 = Relu(c1)
  feat = Transpose<perm=[0,2,3,1]>(r1)
  seam = Transpose<perm=[0,3,1,2]>(feat)
  c2 = Conv<pads=[1,1,1,1]>(seam, w2, b2)
  r2 = Relu(c2)
  p = GlobalAveragePool(r2)
  shp = Constant<value=int64[2] {0,-1}>()
  flat = Reshape(p, shp)
  logits = Gemm<transB=1>(flat, w3)
}
"""
PARTS = ["keras", "keras", "keras", "keras", "seam", "torch", "torch", "torch", "torch", "torch", "torch"]
WEIGHTS = {"w1": (4, 3, 3, 3), "b1": (4,), "w2": (5, 4, 3, 3), "b2": (5,), "w3": (10, 5)}


@pytest.fixture(scope="module")
def merged() -> onnx.ModelProto:
    model = onnx.parser.parse_model(MERGED)
    rng = np.random.default_rng(0)
    for name, shape in WEIGHTS.items():
        model.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    for node, part in zip(model.graph.node, PARTS, strict=True):
        node.name = f"{part}/{node.output[0]}"
        _meta.set_prop(node, _meta.PART, part)
    _meta.set_prop(model, _meta.PARTS, '["keras", "seam", "torch"]')
    _meta.set_prop(model, _meta.SOURCE, "merged")
    _meta.set_layout(model, "image", "NHWC")
    onnx.checker.check_model(model, full_check=True)
    return model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"image": x})[0])


def test_cancels_the_seam_transpose_pair(merged: onnx.ModelProto) -> None:
    result = optimize(merged)
    assert _ops(merged).count("Transpose") == 3
    assert _ops(result).count("Transpose") == 1  # only the NHWC input's own transpose is left
    assert "Constant" not in _ops(result)  # folded into an initializer
    onnx.checker.check_model(result, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(result, x), _run(merged, x), rtol=1e-5, atol=1e-6)


def test_never_mutates_its_input(merged: onnx.ModelProto) -> None:
    before = merged.SerializeToString()
    result = optimize(merged)
    assert merged.SerializeToString() == before
    assert result is not merged


def test_keeps_signature_and_symbolic_dims(merged: onnx.ModelProto) -> None:
    result = optimize(merged)
    assert list(result.graph.input) == list(merged.graph.input)
    assert list(result.graph.output) == list(merged.graph.output)
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_keeps_model_metadata_and_node_provenance(merged: onnx.ModelProto) -> None:
    result = optimize(merged)
    assert _meta.get_parts(result) == ["keras", "seam", "torch"]
    assert _meta.get_source(result) == "merged"
    assert _meta.get_layouts(result) == {"image": "NHWC"}
    parts = {n.name: _meta.get_part(n) for n in result.graph.node}
    assert all(p is not None for p in parts.values()), parts
    assert parts["keras/c1"] == "keras"
    assert parts["torch/logits"] == "torch"


def test_restores_node_metadata_an_optimizer_dropped(merged: onnx.ModelProto) -> None:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(merged)
    for node in stripped.graph.node:
        del node.metadata_props[:]
    # a node the optimizer might create: new name and output, fed by a torch node
    extra = stripped.graph.node.add()
    extra.CopyFrom(onnx.helper.make_node("Identity", ["r2"], ["r2_copy"], name="fused_0"))
    _optimize._restore_node_parts(merged, stripped)
    got = {n.name: _meta.get_part(n) for n in stripped.graph.node}
    want = {n.name: _meta.get_part(n) for n in merged.graph.node}
    assert {k: got[k] for k in want} == want
    assert got["fused_0"] == "torch"


def test_restores_a_node_by_its_output_when_renamed(merged: onnx.ModelProto) -> None:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(merged)
    for node in stripped.graph.node:
        del node.metadata_props[:]
        node.name = "renamed_" + node.output[0]
    _optimize._restore_node_parts(merged, stripped)
    assert [_meta.get_part(n) for n in stripped.graph.node] == PARTS


def test_model_without_provenance_gets_none_added() -> None:
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[batch,3] x) => (float[batch,3] y)
        { a = Identity(x)
          y = Relu(a) }
        """
    )
    result = optimize(model)
    assert _ops(result) == ["Relu"]
    assert all(_meta.get_part(n) is None for n in result.graph.node)


def test_accepts_a_path(merged: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(merged, str(path))
    result = optimize(path)
    assert _ops(result).count("Transpose") == 1


def test_parity_with_given_feeds(merged: onnx.ModelProto) -> None:
    x = np.random.default_rng(2).standard_normal((5, 6, 6, 3)).astype(np.float32)
    result = optimize(merged, feeds={"image": x}, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(result, x), _run(merged, x), rtol=1e-5, atol=1e-6)


def test_bad_feeds_are_an_error(merged: onnx.ModelProto) -> None:
    with pytest.raises(StitchError, match="feeds given to optimize"):
        optimize(merged, feeds={"image": np.zeros((1, 2), np.float32)})


def test_parity_check_reports_a_difference(merged: onnx.ModelProto) -> None:
    wrong = onnx.ModelProto()
    wrong.CopyFrom(merged)
    w3 = next(t for t in wrong.graph.initializer if t.name == "w3")
    w3.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w3) * 1.01, "w3"))
    with pytest.raises(ValidationError, match="logits: max abs err") as info:
        _optimize._check_parity(merged, wrong, None, rtol=1e-4, atol=1e-5)
    assert info.value.report and info.value.report[0].startswith("logits")


def test_parity_check_skipped_without_failing_when_checks_off(merged: onnx.ModelProto) -> None:
    result = optimize(merged, check_parity=False)
    assert _ops(result).count("Transpose") == 1


def test_missing_onnxscript_is_a_typed_error(
    merged: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript.optimizer", None)
    with pytest.raises(MissingDependencyError, match="onnxscript") as info:
        optimize(merged)
    assert info.value.extra == "optimize"


def test_public_access_through_ox(merged: onnx.ModelProto) -> None:
    import onnxstitch as ox

    assert ox.optimize is optimize
