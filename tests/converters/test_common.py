"""The shared converter plumbing (onnxstitch.converters._common) on tiny ONNX-text models."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import parser

from onnxstitch import _meta
from onnxstitch.converters import _common
from onnxstitch.errors import (
    ConversionError,
    MissingDependencyError,
    StitchError,
    ValidationError,
    VersionError,
)

TWO_IN = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[s0, 3] x, float[s77, s9] y) => (float[unk__19, 3] z, float[s9, s77] t, float[2, 3] c) {
  z = Add(x, x)
  t = Transpose<perm = [1, 0]>(y)
  c = Constant<value = float[2, 3] {1, 2, 3, 4, 5, 6}>()
}
"""

IMAGE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 3, 4, 4] image, float[N, 2] v) => (float[N, 3, 4, 4] out, float[N, 2] w) {
  out = Relu(image)
  w = Identity(v)
}
"""


def _model(text: str) -> onnx.ModelProto:
    return parser.parse_model(text)


def _dims(model: onnx.ModelProto) -> dict[str, list[object]]:
    return {v.name: _common.value_dims(v) for v in [*model.graph.input, *model.graph.output]}


def test_unify_batch_dim_renames_inputs_and_unlinked_outputs() -> None:
    model = _common.unify_batch_dim(_model(TWO_IN))
    assert _dims(model) == {
        "x": ["batch", 3],
        "y": ["batch", "s9"],
        "z": ["batch", 3],  # tf2onnx-style unlinked unk__19 -> batch
        "t": ["s9", "batch"],  # dim 0 is another input's axis: kept; s77 followed y's rename
        "c": [2, 3],  # static: never touched
    }


def test_unify_batch_dim_keeps_static_inputs() -> None:
    text = TWO_IN.replace("float[s0, 3] x", "float[5, 3] x").replace("float[s77, s9] y", "float[5, 4] y")
    model = _common.unify_batch_dim(_model(text.replace("float[s9, s77] t", "float[4, 5] t")))
    assert _dims(model)["x"] == [5, 3] and _dims(model)["z"] == ["unk__19", 3]  # nothing to tie to


def test_rename_dims_inside_expressions_and_value_info() -> None:
    model = _model(TWO_IN)
    model.graph.value_info.append(
        onnx.helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, ["2*s0", "s0 - 1"])
    )
    _common.rename_dims(model, {"s0": "batch", "s9": "seq"})
    assert _common.value_dims(model.graph.value_info[0]) == ["2*batch", "batch - 1"]
    assert _dims(model)["y"] == ["s77", "seq"]


def test_rename_tensors_everywhere_and_refuses_clashes() -> None:
    model = _common.rename_tensors(_model(TWO_IN), {"x": "features", "z": "doubled"})
    assert [v.name for v in model.graph.input] == ["features", "y"]
    assert (
        list(model.graph.node[0].input) == ["features", "features"]
        and model.graph.node[0].output[0] == "doubled"
    )
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(ConversionError, match="already taken"):
        _common.rename_tensors(_model(TWO_IN), {"x": "y"})


def test_clean_name() -> None:
    assert _common.clean_name("dense:0") == "dense" and _common.clean_name("x:1") == "x:1"


def test_record_layouts_and_errors() -> None:
    model = _common.record_layouts(_model(IMAGE), {"image": "NCHW", "out": "NHWC"})
    assert _meta.get_layouts(model) == {"image": "NCHW", "out": "NHWC"}
    with pytest.raises(ConversionError) as info:
        _common.record_layouts(_model(IMAGE), {"nope": "NCHW", "v": "NCHW", "image": "CHW"})
    text = str(info.value)  # every problem at once
    assert "'nope' is not a graph input or output" in text and "rank 2" in text and "'CHW'" in text


def test_set_producer() -> None:
    model = _model(IMAGE)
    model.producer_name, model.producer_version = "pytorch", "2.13.0"
    _common.set_producer(model, "torch")
    assert _meta.get_source(model) == "torch" and model.producer_name == "onnxstitch"
    assert "pytorch 2.13.0" in model.doc_string


def test_batch_sizes_for() -> None:
    assert _common.batch_sizes_for(_model(IMAGE)) == (1, 7)
    assert _common.batch_sizes_for(_model(IMAGE.replace("[N, 2] v", "[4, 2] v"))) == (4,)


def test_check_opset_and_runtime_max() -> None:
    top = _common.max_runtime_opset()
    assert 18 <= top <= onnx.defs.onnx_opset_version()
    assert _common.check_opset(None, what="t") is None and _common.check_opset(17, what="t") == 17
    for bad in (6, top + 1, True, 17.0):
        with pytest.raises(VersionError, match=f"between 7 and {top}"):
            _common.check_opset(bad, what="t")  # type: ignore[arg-type]


def test_finalize_infers_shapes_and_refuses_invalid() -> None:
    model = _model(IMAGE)
    out = _common.finalize(model, what="m")
    assert out is not model and len(out.graph.value_info) == 0  # outputs typed already, nothing internal
    broken = _model(IMAGE.replace("out = Relu(image)", "out = Relu(missing)"))
    with pytest.raises(ConversionError, match="m: the exported ONNX model is invalid"):
        _common.finalize(broken, what="m")


def test_validate_passes_and_fails_with_table() -> None:
    model = _model(IMAGE)
    report = _common.validate(model, lambda image, v: [np.maximum(image, 0), v], what="m")
    assert report and sorted({r.batch for r in report.rows}) == [1, 7]
    with pytest.raises(ValidationError) as info:
        _common.validate(
            model, lambda image, v: [np.maximum(image, 0), v + 1e-3], what="m", atol=1e-4, rtol=0
        )
    assert info.value.report is not None and "m: the converted ONNX model" in str(info.value)
    assert "✗" in str(info.value)


def test_validate_wraps_reference_errors() -> None:
    def reference(image: np.ndarray, v: np.ndarray) -> None:
        raise RuntimeError("boom")

    with pytest.raises(StitchError, match="boom"):
        _common.validate(_model(IMAGE), reference, what="m")


def test_require(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _common.require("onnx", package="onnx", extra="x", purpose="p") is onnx
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependencyError, match="tensorflow") as info:
        _common.require("tensorflow", package="tensorflow", extra="keras", purpose="Converting Keras")
    assert "onnxstitch[keras]" in str(info.value)


def test_finalize_through_a_file_past_the_protobuf_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # the > 2 GB route, taken here by lowering the threshold: same result, weights loaded back inside
    model = _model(TWO_IN)
    expected = _common.finalize(model, what="m")
    monkeypatch.setattr(_common, "_PROTOBUF_LIMIT", 0)
    out = _common.finalize(_model(TWO_IN), what="m")
    assert out.graph == expected.graph
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in out.graph.initializer)


def test_drop_unused_opsets_keeps_default_and_used_domains() -> None:
    from onnxstitch.converters._common import drop_unused_opsets

    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 2, "com.microsoft" : 1]>
        g (float[N] x) => (float[N] y) { y = Relu (x) }"""
    )
    drop_unused_opsets(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    used = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 2]>
        g (float[N] x) => (float[N] y) { y = ai.onnx.ml.Normalizer <norm = "L1"> (x) }"""
    )
    drop_unused_opsets(used)
    assert {o.domain for o in used.opset_import} == {"", "ai.onnx.ml"}


# ---------------------------------------------------------------------- validation metric and feeds
SCALE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 4] y) {
  y = Identity(x)
}
"""

TOKENS = """
<ir_version: 8, opset_import: ["" : 18]>
g (int64[N, 5] ids, int64[N, 5] mask) => (float[N, 5] y) {
  f = Cast<to = 1>(ids)
  m = Cast<to = 1>(mask)
  y = Mul(f, m)
}
"""


def test_scaled_metric_judges_errors_against_the_output_magnitude() -> None:
    """float32 noise of 3e-5 on a near-zero element of an output that reaches 30 is no bug."""
    model = _model(SCALE)
    x = np.array([[30.0, -12.0, 1e-6, 0.5]] * 2, dtype=np.float32)

    def off(x: np.ndarray) -> np.ndarray:
        return x + np.array([0, 0, 3e-5, 0], dtype=np.float32)

    feeds = [("given", {"x": x})]
    with pytest.raises(ValidationError):  # elementwise: 3e-5 > 1e-5 + 1e-4 * 1e-6
        _common.validate(model, off, what="m", feeds=feeds, metric="elementwise")
    report = _common.validate(model, off, what="m", feeds=feeds)  # scaled: 3e-5 <= 1e-5 + 1e-4 * 30
    (row,) = report.rows
    assert row.metric == "scaled" and row.scale == 30.0 and row.bound == pytest.approx(3.01e-3)
    assert "max|err| <= atol + rtol * max|ref|" in str(report)


def test_scaled_metric_still_fails_errors_of_the_output_scale() -> None:
    model = _model(SCALE)
    x = np.array([[30.0, -12.0, 1e-6, 0.5]], dtype=np.float32)
    with pytest.raises(ValidationError) as info:
        _common.validate(model, lambda x: x * 1.01, what="m", feeds=[("given", {"x": x})])
    (row,) = info.value.report.rows
    assert not row.passed and "max abs err 0.3 > atol + rtol * max|ref| = 0.00304 (max|ref| 30.3)" in row.note
    assert "validate=False" not in str(info.value)


@pytest.mark.parametrize("metric", ["scaled", "elementwise"])
@pytest.mark.parametrize("values", [6e-10, 0.0, 2.5])  # all tiny, all zero, all the same
def test_an_output_that_cannot_tell_anything_fails_as_uninformative(metric: str, values: float) -> None:
    model = _model(SCALE)
    feeds = [("all the same", {"x": np.full((3, 4), values, dtype=np.float32)})]
    with pytest.raises(ValidationError) as info:
        _common.validate(model, lambda x: x, what="m", feeds=feeds, metric=metric)
    (row,) = info.value.report.rows
    assert not row.passed and row.note.startswith("uninformative: the reference values lie in")
    assert info.value.hint is not None and "validation_inputs=" in info.value.hint
    # the same model on inputs that vary passes
    _common.validate(model, lambda x: x, what="m", metric=metric)


def test_example_feeds_keep_integer_values_and_vary_floats() -> None:
    model = _model(TOKENS)
    ids = np.array([[101, 7, 7, 9, 102]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0, 0]], dtype=np.int64)
    sets = _common.example_feed_sets(model, {"ids": ids, "mask": mask})
    assert sets[0][0] == "the example inputs"
    assert [feed["ids"].shape[0] for _, feed in sets] == [1, 1, 7]
    for _, feed in sets:
        assert set(np.unique(feed["ids"])) <= {7, 9, 101, 102}
        assert (feed["mask"] == mask).all()  # a mask keeps its padding pattern, row by row
    assert not (sets[2][1]["ids"] == ids).all()  # ids are drawn anew
    zeros = _common.example_feed_sets(_model(SCALE), {"x": np.zeros((2, 4), np.float32)})
    assert zeros[0][1]["x"].std() == 0 and all(feed["x"].std() > 0 for _, feed in zeros[1:])
    assert 0.5 < zeros[2][1]["x"].std() < 2  # batch 7: standard normal noise, all-zero examples


def test_random_integer_feeds_break_a_mask_model_the_examples_do_not() -> None:
    """GPT-2's failure: a mask the model treats as 0/1 fed 0..3. The examples' values keep it 0/1."""
    model = _model(TOKENS)

    def reference(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:  # the native model: mask is boolean
        return (ids * (mask > 0)).astype(np.float32)

    with pytest.raises(ValidationError) as info:
        _common.validate(model, reference, what="m")  # seeded random ints 0..3
    assert "feeds #1: seeded random inputs" in str(info.value)
    ids = np.array([[5, 6, 7, 8, 9]], dtype=np.int64)
    examples = {"ids": ids, "mask": np.array([[1, 1, 1, 0, 0]], dtype=np.int64)}
    report = _common.validate(model, reference, what="m", feeds=_common.example_feed_sets(model, examples))
    assert len(report.feeds) == 3 and report.feeds[0].startswith("the example inputs: ids int64[1,5]")
    assert "mask int64[7,5] in {0, 1}" in report.feeds[2]


def test_user_feed_sets_forms_and_errors() -> None:
    model = _model(TOKENS)
    a, b = np.ones((2, 5), np.int64), np.zeros((2, 5), np.int64)
    as_dict = _common.user_feed_sets(model, {"ids": a, "mask": b}, what="m")
    as_tuple = _common.user_feed_sets(model, [(a, b), {"mask": b, "ids": a}], what="m")
    assert [label for label, _ in as_tuple] == ["validation_inputs[0]", "validation_inputs[1]"]
    for _, feed in [*as_dict, *as_tuple]:
        assert feed["ids"] is a and feed["mask"] is b
    with pytest.raises(StitchError, match=r"validation_inputs\[0\] has 1 arrays"):
        _common.user_feed_sets(model, [(a,)], what="m")
    with pytest.raises(StitchError, match=r"validation_inputs\[0\] names \['idz', 'mask'\]"):
        _common.user_feed_sets(model, {"idz": a, "mask": b}, what="m")


def test_no_hint_suggests_turning_validation_off() -> None:
    """A mismatch is a wrong model: no fix line anywhere may propose skipping the check."""
    import ast
    from pathlib import Path

    import onnxstitch

    offenders = []
    for path in Path(onnxstitch.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "hint":
                text = "".join(
                    n.value
                    for n in ast.walk(node.value)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                )
                if "validate=False" in text or "no-validate" in text:
                    offenders.append(f"{path.name}:{node.value.lineno}: {text[:80]}")
    assert offenders == []
