"""Dims through a merge: symbols flow through each part, and a proven batch dim is named ``batch``.

Plain ONNX parts (the kind skl2onnx or tf2onnx write), so these run without any framework.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import onnxstitch as ox
from onnxstitch.files.describe import describe
from onnxstitch.runtime.deploy.triton import triton_config

#: a scikit-learn-like pipeline (scaler + linear + relu): input ``[?, 20]``, dim 0 unnamed
SKLEARN_LIKE = """<ir_version: 8, opset_import: ["" : 17]>
pipeline (float[?, 20] X) => (float[?, 16] features) {
    mean = Constant <value = float[20] {1,2,3,4,5,6,7,8,9,10,1,2,3,4,5,6,7,8,9,10}> ()
    centred = Sub (X, mean)
    shape = Constant <value = int64[2] {20, 16}> ()
    w = ConstantOfShape <value = float[1] {0.05}> (shape)
    h = MatMul (centred, w)
    features = Relu (h)
}"""

#: a converted torch head: ``batch`` named by the converter
TORCH_HEAD = """<ir_version: 10, opset_import: ["" : 18]>
head (float[batch, 16] features) => (float[batch, 3] output) {
    shape = Constant <value = int64[2] {16, 3}> ()
    w = ConstantOfShape <value = float[1] {0.5}> (shape)
    output = MatMul (features, w)
}"""

#: what tf2onnx writes for a per-token Keras Dense(5): Tensordot as Shape/Gather/Concat/Reshape
KERAS_TOKEN_HEAD = """<ir_version: 8, opset_import: ["" : 18]>
tf2onnx (float[batch, hidden_dim1, 16] hidden) => (float[batch, token_logits_dim1, 5] token_logits) {
    shape = Shape (hidden)
    free = Constant <value = int64[2] {0, 1}> ()
    kept = Gather <axis = 0> (shape, free)
    five = Constant <value = int64[1] {5}> ()
    out_shape = Concat <axis = 0> (kept, five)
    flat_shape = Constant <value = int64[2] {-1, 16}> ()
    flat = Reshape (hidden, flat_shape)
    wshape = Constant <value = int64[2] {16, 5}> ()
    w = ConstantOfShape <value = float[1] {0.25}> (wshape)
    logits = MatMul (flat, w)
    token_logits = Reshape (logits, out_shape)
}"""

#: a torch-like encoder with dynamic batch and sequence
ENCODER = """<ir_version: 10, opset_import: ["" : 18]>
encoder (float[batch, seq, 16] x) => (float[batch, seq, 16] hidden) { hidden = Tanh (x) }"""


def parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in vi.type.tensor_type.shape.dim
    ]


def batch_size_of(model: onnx.ModelProto) -> int:
    text, size = triton_config(model, name="m")
    assert text_format.Parse(text, mc.ModelConfig()).max_batch_size == size
    return size


def test_unnamed_dim0_proven_batch_is_named_batch_and_triton_batches() -> None:
    """Issue 10 item 4: the [?, 20] input used to stay unnamed while the output said `batch`, so
    `deploy triton` wrote max_batch_size 0."""
    merged = ox.chain({"sk": parse(SKLEARN_LIKE), "head": parse(TORCH_HEAD)})
    assert shape(merged.graph.input[0]) == ["batch", 20]
    assert shape(merged.graph.output[0]) == ["batch", 3]
    assert batch_size_of(merged) == 64
    assert describe(merged)["batching"] == {
        "dim": "batch",
        "reason": "dim 0 of every input and output is 'batch'",
    }
    x = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    session = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"X": x})[0].shape == (5, 3)


def test_two_unnamed_parts_get_batch_named_by_the_merge() -> None:
    """No part names the dim, yet it provably runs from the merged input to the merged output."""
    second = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        scores (float[?, 16] features) => (float[?, 16] scores) { scores = Sigmoid (features) }"""
    )
    merged = ox.chain({"sk": parse(SKLEARN_LIKE), "scores": second})
    assert shape(merged.graph.input[0]) == ["batch", 20]
    assert shape(merged.graph.output[0]) == ["batch", 16]
    assert batch_size_of(merged) == 64


def test_unnamed_dim0_that_does_not_reach_the_outputs_is_not_the_batch() -> None:
    """A part that reduces over dim 0: its input's dim 0 is no batch, so it stays unnamed and Triton
    does not batch; `inspect` (describe) says which tensor keeps it off."""
    pooled = parse(
        """<ir_version: 8, opset_import: ["" : 18]>
        pool (float[?, 20] X) => (float[1, 20] pooled) {
            axes = Constant <value = int64[1] {0}> ()
            pooled = ReduceMean <keepdims = 1> (X, axes)
        }"""
    )
    merged = ox.chain({"pool": pooled, "sk": parse(SKLEARN_LIKE)})
    assert shape(merged.graph.input[0]) == [None, 20]
    assert batch_size_of(merged) == 0
    why = describe(merged)["batching"]
    assert why["dim"] is None
    assert "input 'X' has an unnamed dim 0" in why["reason"]


def test_sequence_symbol_flows_through_a_part() -> None:
    """Issue 10 item 5: the merged output was ['batch', 'token_logits_dim1', 5]: symbols met only at seams."""
    merged = ox.chain({"encoder": parse(ENCODER), "head": parse(KERAS_TOKEN_HEAD)})
    assert shape(merged.graph.input[0]) == ["batch", "seq", 16]
    assert shape(merged.graph.output[0]) == ["batch", "seq", 5]
    text = onnx.printer.to_text(merged.graph)
    assert "token_logits_dim1" not in text and "hidden_dim1" not in text


def test_a_dim_shape_inference_cannot_follow_keeps_its_own_symbol() -> None:
    """Only what inference shows is joined: a data-dependent length (NonZero) is not `seq`."""
    picker = parse(
        """<ir_version: 8, opset_import: ["" : 18]>
        picker (float[batch, seq, 16] hidden) => (int64[3, found] where) { where = NonZero (hidden) }"""
    )
    merged = ox.chain({"encoder": parse(ENCODER), "picker": picker})
    assert shape(merged.graph.output[0]) == [3, "found"]


def test_inputs_are_not_modified_by_the_dim_flow() -> None:
    sk, head = parse(SKLEARN_LIKE), parse(TORCH_HEAD)
    before = (sk.SerializeToString(), head.SerializeToString())
    ox.chain({"sk": sk, "head": head})
    assert (sk.SerializeToString(), head.SerializeToString()) == before
