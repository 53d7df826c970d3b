"""Tiny models for the deploy tests."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

BATCHED = """<ir_version: 8, opset_import: ["" : 18]>
g (float[batch, 3, 8, 8] image, int64[batch, 2] ids) => (float[batch, 10] logits, int64[batch] total) {
    axes = Constant <value = int64[2] {2, 3}> ()
    pooled = ReduceMean <keepdims = 0> (image, axes)
    w = Constant <value = float[3, 10] {1,2,3,4,5,6,7,8,9,10,1,2,3,4,5,6,7,8,9,10,1,2,3,4,5,6,7,8,9,10}> ()
    logits = MatMul (pooled, w)
    one = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 0> (ids, one)
}"""

UNBATCHED = """<ir_version: 8, opset_import: ["" : 18]>
g (float[4, seq] x) => (float[4, seq] y) { y = Relu (x) }"""


@pytest.fixture
def batched() -> onnx.ModelProto:
    return onnx.parser.parse_model(BATCHED)


@pytest.fixture
def unbatched() -> onnx.ModelProto:
    return onnx.parser.parse_model(UNBATCHED)
