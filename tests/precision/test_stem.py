"""The thin convolutions of an int8 part: kept float32 or quantized, decided by timing unless pinned.

The decision is driven here by two models whose costs lie far apart (four 256×256 MatMuls, 34 MFLOP
at batch 64, against one Add: several times apart at batch 1, tens of times at batch 64), far beyond
the 1.10 margin, on one thread's CPU time; no timed assertion on the hybrid itself, whose stem is a
close call.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
import onnx.parser
import pytest
from _precision_models import Hybrid, images
from onnx import numpy_helper

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.errors import StitchError
from onnxstitch.precision import read_precision
from onnxstitch.precision._stem import MARGIN, choose_thin, thin_line


def _light() -> onnx.ModelProto:
    return onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 256] x) => (float[N, 256] y) { y = Add(x, x) }"""
    )


def _heavy() -> onnx.ModelProto:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 256] x) => (float[N, 256] y) {
            a = MatMul(x, w)
            b = MatMul(a, w)
            c = MatMul(b, w)
            y = MatMul(c, w)
        }"""
    )
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32) / 16
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    return model


HOLDOUT = [{"x": np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)}]


@pytest.mark.parametrize(("kept_is_heavy", "chosen"), [(True, "int8"), (False, "float32")])
def test_the_faster_way_is_chosen_and_recorded(kept_is_heavy: bool, chosen: str) -> None:
    heavy, light = _heavy(), _light()
    calls: list[frozenset[str]] = []

    def convert(keep: Collection[str]) -> onnx.ModelProto:
        calls.append(frozenset(keep))
        return (heavy if kept_is_heavy else light) if keep else (light if kept_is_heavy else heavy)

    keep, record = choose_thin(convert, {"stem"}, HOLDOUT, budget_s=0.05)
    assert keep == ({"stem"} if chosen == "float32" else set())
    assert sorted(calls, key=len) == [frozenset(), frozenset({"stem"})]  # each way converted once
    assert record["chosen"] == chosen and record["convs"] == ["stem"] and record["margin"] == MARGIN
    assert set(record["kept_float32_ms"]) == set(record["int8_ms"]) == {"1", "64"}  # batch 1 and the hold-out
    ratios = [record["kept_float32_ms"][b] / record["int8_ms"][b] for b in ("1", "64")]
    assert record["int8_gain"] == pytest.approx(float(np.sqrt(ratios[0] * ratios[1])), rel=0.02)
    assert (record["int8_gain"] >= MARGIN) == (chosen == "int8")
    shown = "quantized int8" if chosen == "int8" else "kept float32"
    assert thin_line(record).startswith(f"thin convolutions (1): {shown}: int8 ")


def test_a_fixed_batch_is_timed_at_that_batch_only() -> None:
    heavy, light = _heavy(), _light()
    for model in (heavy, light):  # the batch dimension fixed at 64
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 64
    keep, record = choose_thin(lambda keep: heavy if keep else light, {"stem"}, HOLDOUT, budget_s=0.05)
    assert set(record["int8_ms"]) == {"64"} and record["chosen"] == "int8" and keep == set()


def test_a_stem_that_cannot_be_quantized_stays_float32() -> None:
    light = _light()

    def convert(keep: Collection[str]) -> onnx.ModelProto:
        if not keep:
            raise StitchError("onnxruntime's quantization failed for parts {'model': 'int8'}: boom")
        return light

    keep, record = choose_thin(convert, {"stem"}, HOLDOUT)
    assert keep == {"stem"} and record["chosen"] == "float32" and "int8_ms" not in record
    assert thin_line(record) == "thin convolutions (1): kept float32: quantizing them failed (StitchError)"


def test_a_close_call_keeps_the_stem_float32() -> None:
    """The same model both ways: no gain, so the measured default (float32 stem) stays."""
    light = _light()
    keep, record = choose_thin(lambda keep: light, {"stem"}, HOLDOUT, budget_s=0.05)
    assert keep == {"stem"} and record["chosen"] == "float32"


def test_the_default_decides_and_the_model_matches_the_decision(hybrid: Hybrid) -> None:
    q = ox.quantize(hybrid.model, {hybrid.input: images(64, 1)})
    settings = read_precision(q)["settings"]  # type: ignore[index]
    decision = settings["thin_convs"]
    assert settings["min_conv_channels"] == "auto" and decision["decided"] == "by CPU time on this machine"
    stem = decision["convs"]
    assert len(stem) == 1 and set(decision["int8_ms"]) == {"1", "16"}  # batch 1 and the 16 held out
    floats = {t.name for t in q.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    float_convs = [
        n.name
        for n in q.graph.node
        if n.op_type == "Conv" and _meta.get_part(n) == "backbone" and n.input[1] in floats
    ]
    if decision["chosen"] == "float32":
        assert settings["kept_fp32"] == stem and float_convs == stem
    else:
        assert settings["kept_fp32"] == [] and float_convs == []


def test_a_pinned_min_conv_channels_is_not_timed(hybrid: Hybrid) -> None:
    for pinned, kept in ((4, 1), (0, 0)):
        q = ox.quantize(hybrid.model, {hybrid.input: images(64, 1)}, min_conv_channels=pinned)
        settings = read_precision(q)["settings"]  # type: ignore[index]
        assert "thin_convs" not in settings and settings["min_conv_channels"] == pinned
        assert len(settings["kept_fp32"]) == kept
