"""Tiny ONNX-text models shared by the serve tests."""

from __future__ import annotations

import onnx
import onnx.parser

# y = 2 * x + n (broadcast over the row), z = n + 1: both outputs depend on the request's data,
# so an answer mixed up between two requests is caught.
ADD = """
<ir_version: 9, opset_import: ["" : 18]>
adder (float[batch, 4] x, int64[batch, 1] n) => (float[batch, 4] y, int64[batch, 1] z) {
    nf = Cast<to = 1>(n)
    two = Constant<value = float {2.0}>()
    xs = Mul(x, two)
    y = Add(xs, nf)
    one = Constant<value = int64 {1}>()
    z = Add(n, one)
}
"""

# a loop of `steps` elementwise passes over x: as slow as asked for
SLOW = """
<ir_version: 9, opset_import: ["" : 18]>
slow (float[batch, 4096] x, int64[1] steps) => (float[batch, 4096] y) {
    s = Squeeze(steps)
    cond = Constant<value = bool {1}>()
    y = Loop(s, cond, x) <body = body (int64 i, bool c, float[batch, 4096] a)
                                   => (bool c_out, float[batch, 4096] b) {
        c_out = Identity(c)
        t = Sin(a)
        b = Cos(t)
    }>
}
"""


def model(text: str) -> onnx.ModelProto:
    parsed = onnx.parser.parse_model(text)
    onnx.checker.check_model(parsed, full_check=True)
    return parsed
