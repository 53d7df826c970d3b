"""ox.to_fp16: the float16 graph runs right on the CPU; parts left in float32 stay so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _precision_models import Hybrid, images
from onnx import TensorProto

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.errors import InputError
from onnxstitch.precision import PrecisionReport, part_precisions, read_precision


def _half_initializers(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}


def test_fp16_runs_on_cpu_within_fp16_tolerance(hybrid: Hybrid) -> None:
    before = hybrid.model.SerializeToString()
    half = ox.to_fp16(hybrid.model, reference=hybrid.reference)
    assert hybrid.model.SerializeToString() == before
    onnx.checker.check_model(half, full_check=True)
    assert part_precisions(half) == {"backbone": "fp16", "head": "fp16"}
    assert len(_half_initializers(half)) >= 6  # both convolutions' and both Gemms' weights and biases
    session = ox.Session(half, device="cpu")
    assert [i.dtype for i in session.inputs] == [np.float32]  # keep_io_types
    x = images(64, 11)
    got = session.run({hybrid.input: x})["output"]
    want = ox.Session(hybrid.model, device="cpu").run({hybrid.input: x})["output"]
    assert got.dtype == np.float32
    # float16 keeps 11 significant bits: a few units of 1e-3 of the logits' scale after 4 layers
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-3 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    report = PrecisionReport.from_dict(read_precision(half) or {})
    assert report.passed and {r.against for r in report.rows} == {"float32 model", "native reference"}


def test_fp16_parts_keeps_the_backbone_float32(hybrid: Hybrid) -> None:
    half = ox.to_fp16(hybrid.model, parts=["head"], holdout={hybrid.input: images(32, 3)})
    assert part_precisions(half) == {"backbone": "fp32", "head": "fp16"}
    halves = _half_initializers(half)
    for node in half.graph.node:
        if _meta.get_part(node) == "backbone":
            assert not set(node.input) & halves, node.name
    head_inputs = {i for n in half.graph.node if _meta.get_part(n) == "head" for i in n.input}
    assert head_inputs & halves
    x = images(16, 4)
    ox.Session(half, device="cpu").run({hybrid.input: x})


def test_fp16_holdout_is_checked(hybrid: Hybrid) -> None:
    with pytest.raises(InputError, match="'image' is constant"):
        ox.to_fp16(hybrid.model, holdout={hybrid.input: np.ones((4, 8, 8, 1), np.float32)})


def test_fp16_without_io_casts_takes_and_gives_float16(hybrid: Hybrid) -> None:
    half = ox.to_fp16(hybrid.model, keep_io_types=False, holdout={hybrid.input: images(32, 8)})
    session = ox.Session(half, device="cpu")
    assert [i.dtype for i in session.inputs] == [np.float16]
    out = session.run({hybrid.input: images(4, 9).astype(np.float16)})["output"]
    assert out.dtype == np.float16 and out.shape == (4, 10)
