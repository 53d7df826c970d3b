"""Seams: dtype, rank, static dims, layouts checked before building; adapters only where provably right."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.compose
import onnxruntime as ort
import pytest
from compose_helpers import assert_valid, dims, parse, run

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.errors import SeamError, SpecError

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _producer(dtype: str = "float", shape: str = "batch, 4", layout: str | None = None) -> onnx.ModelProto:
    return parse(
        f"""
        <ir_version: 10, opset_import: ["" : 20]>
        p ({dtype}[{shape}] x) => ({dtype}[{shape}] feat) {{ feat = Neg(x) }}""",
        layouts={"feat": layout} if layout else None,
    )


def _consumer(dtype: str = "float", shape: str = "batch, 4", layout: str | None = None) -> onnx.ModelProto:
    return parse(
        f"""
        <ir_version: 10, opset_import: ["" : 20]>
        c ({dtype}[{shape}] x) => ({dtype}[{shape}] y) {{ y = Abs(x) }}""",
        layouts={"x": layout} if layout else None,
    )


def _conv_head() -> onnx.ModelProto:
    """A torch-like NCHW head with a channel-mixing 1x1 conv: wrong layouts give wrong numbers."""
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        head (float[batch, 4, 4, 4] x) => (float[batch, 2, 4, 4] y) { y = Conv(x, w) }"""
    )
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w")
    )
    _meta.set_layout(model, "x", "NCHW")
    return model


def test_float64_into_float32_refused_unlike_onnx_compose():
    p, c = _producer("double"), _consumer("float")
    built = onnx.compose.merge_models(p, c, io_map=[("feat", "x")])  # onnx.compose builds it without a word
    assert len(built.graph.node) == 2
    with pytest.raises(SeamError) as info:
        ox.chain({"p": p, "c": c})
    (problem,) = info.value.problems
    assert "p:feat (float64[batch,4]) -> c:x (float32[batch,4])" in problem
    assert "ox.adapters.cast('float32', from_dtype='float64')" in problem


def test_float_into_int_refused():
    with pytest.raises(SeamError, match=r"float32 does not widen to int64"):
        ox.chain({"p": _producer("float"), "c": _consumer("int64")})


@pytest.mark.parametrize(
    ("src", "dst", "np_dtype"), [("float16", "float", np.float16), ("int32", "int64", np.int32)]
)
def test_widening_cast_inserted(caplog, src, dst, np_dtype):
    with caplog.at_level(logging.INFO, logger="onnxstitch.compose"):
        merged = ox.chain({"p": _producer(src), "c": _consumer(dst)})
    assert_valid(merged)
    casts = [n for n in merged.graph.node if n.op_type == "Cast"]
    assert len(casts) == 1
    assert _meta.get_part(casts[0]) == "c.adapter"
    assert "inserted Cast" in caplog.text
    x = (np.arange(8).reshape(2, 4) - 3).astype(np_dtype)
    out = run(merged, {"x": x})["y"]
    assert out.dtype == (np.float32 if dst == "float" else np.int64)
    np.testing.assert_array_equal(out, np.abs(-x).astype(out.dtype))


def test_nhwc_to_nchw_with_coinciding_shapes(rng):
    """onnx.compose wires NHWC into NCHW silently (wrong numbers); we insert the Transpose."""
    keras_like = _producer(shape="batch, 4, 4, 4", layout="NHWC")
    head = _conv_head()
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    want = run(head, {"x": np.transpose(-x, (0, 3, 1, 2))})["y"]  # what the user would write natively
    naive = onnx.compose.merge_models(keras_like, head, io_map=[("feat", "x")])
    wrong = run(naive, {"x": x})["y"]
    assert not np.allclose(wrong, want, atol=1e-3)
    merged = ox.chain({"backbone": keras_like, "head": head})
    transposes = [n for n in merged.graph.node if n.op_type == "Transpose"]
    assert [list(n.attribute[0].ints) for n in transposes] == [[0, 3, 1, 2]]
    assert _meta.get_part(transposes[0]) == "head.adapter"
    np.testing.assert_allclose(run(merged, {"x": x})["y"], want, **TOL)


def test_nchw_to_nhwc_transpose_and_dims_follow(rng):
    p = _producer(shape="batch, 3, 8, 5", layout="NCHW")
    c = _consumer(shape="N, 8, 5, 3", layout="NHWC")
    merged = ox.chain({"p": p, "c": c})
    assert_valid(merged)
    assert dims(merged.graph.output[0]) == ["batch", 8, 5, 3]
    x = rng.standard_normal((2, 3, 8, 5)).astype(np.float32)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], np.abs(np.transpose(x, (0, 2, 3, 1))), **TOL)


def test_equal_shapes_one_layout_known_is_refused_with_both_ways_out(rng):
    """A plain ONNX part (no layout) producing [batch,4,4,4] into an NCHW conv: fits both ways, refused."""
    plain, head = _producer(shape="batch, 4, 4, 4"), _conv_head()
    with pytest.raises(SeamError) as info:
        ox.chain({"p": plain, "c": head})
    (problem,) = info.value.problems
    assert "p:feat (float32[batch,4,4,4]) -> c:x (float32[batch,4,4,4])" in problem
    assert "c:x is NCHW, p:feat records no layout" in problem
    assert "layouts={'p:feat': 'NHWC'}" in problem and "ox.adapters.transpose((0, 3, 1, 2))" in problem
    assert "layouts=" in str(info.value)  # the fix line says it too
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    declared = ox.chain({"p": plain, "c": head}, layouts={"p:feat": "NHWC"})
    assert [n.op_type for n in declared.graph.node].count("Transpose") == 1
    want = run(head, {"x": np.transpose(-x, (0, 3, 1, 2))})["y"]
    np.testing.assert_allclose(run(declared, {"x": x})["y"], want, **TOL)
    as_is = ox.merge({"p": plain, "c": head}, ["p:feat->c:x"], layouts={"p:feat": "NCHW"})
    assert "Transpose" not in [n.op_type for n in as_is.graph.node]
    np.testing.assert_allclose(run(as_is, {"x": x})["y"], run(head, {"x": -x})["y"], **TOL)
    assert plain.SerializeToString() == _producer(shape="batch, 4, 4, 4").SerializeToString()


def test_declared_layouts_are_recorded_and_kept_by_extract_and_replace(rng):
    plain, head = _producer(shape="batch, 4, 4, 4"), _conv_head()
    merged = ox.chain({"p": plain, "c": head}, layouts={"p:feat": "NHWC", "p:x": "NHWC"})
    assert _meta.get_layouts(merged)["x"] == "NHWC"  # the merged input says what was declared
    assert _meta.get_layouts(ox.extract(merged, part="p")) == {"x": "NHWC", "feat": "NHWC"}
    replaced = ox.replace(merged, "c", _conv_head())  # the seam is checked again, as declared
    assert [n.op_type for n in replaced.graph.node].count("Transpose") == 1
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    want = run(head, {"x": np.transpose(-x, (0, 3, 1, 2))})["y"]
    np.testing.assert_allclose(run(replaced, {"x": x})["y"], want, **TOL)


def test_equal_shapes_no_layout_known_is_left_to_the_shapes():
    merged = ox.chain({"p": _producer(shape="batch, 4, 4, 4"), "c": _consumer(shape="batch, 4, 4, 4")})
    assert not [n for n in merged.graph.node if n.op_type == "Transpose"]


def test_equal_shapes_declared_layout_over_a_recorded_one():
    """A declared layout wins over the recorded one (here: both NHWC, so no Transpose)."""
    p = _producer(shape="batch, 4, 4, 4", layout="NHWC")
    c = _consumer(shape="batch, 4, 4, 4", layout="NCHW")
    assert [n.op_type for n in ox.chain({"p": p, "c": c}).graph.node].count("Transpose") == 1
    merged = ox.chain({"p": p, "c": c}, layouts={"c:x": "NHWC"})
    assert "Transpose" not in [n.op_type for n in merged.graph.node]


@pytest.mark.parametrize(
    ("layouts", "needle"),
    [
        ({"q:feat": "NHWC"}, "unknown part 'q'"),
        ({"p:nope": "NHWC"}, "part 'p' has no input or output 'nope'"),
        ({"p:feat": "NLC"}, "NLC describes rank-3 tensors, this one has rank 4 (NHWC, NCHW)"),
        ({"p:feat": "CHW"}, "layout 'CHW' is not one of"),
        ({"feat": "NHWC"}, 'expected "key:tensor"'),
    ],
)
def test_declared_layouts_are_checked(layouts, needle):
    with pytest.raises(SpecError, match="invalid layouts=") as info:
        ox.chain(
            {"p": _producer(shape="batch, 4, 4, 4"), "c": _consumer(shape="batch, 4, 4, 4")}, layouts=layouts
        )
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("src", "dst", "perm"),
    [
        ("NLC", "NCL", (0, 2, 1)),
        ("NCL", "NLC", (0, 2, 1)),
        ("NDHWC", "NCDHW", (0, 4, 1, 2, 3)),
        ("NCDHW", "NDHWC", (0, 2, 3, 4, 1)),
    ],
)
def test_known_layouts_transposed_at_ranks_3_and_5(rng, src, dst, perm):
    """Coinciding sizes (C = L, C = D = H = W): only the recorded layouts say how to line them up."""
    rank = len(src)
    shape = ", ".join(["batch", *["3"] * (rank - 1)])
    merged = ox.chain({"p": _producer(shape=shape, layout=src), "c": _consumer(shape=shape, layout=dst)})
    assert_valid(merged)
    x = rng.standard_normal((2, *[3] * (rank - 1))).astype(np.float32)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], np.abs(np.transpose(-x, perm)), **TOL)


@pytest.mark.parametrize(
    ("shape", "layout", "perm"),
    [("batch, 16, 16", "NCL", "(0, 2, 1)"), ("batch, 3, 3, 3, 3", "NCDHW", "(0, 4, 1, 2, 3)")],
)
def test_one_layout_known_coinciding_refused_at_ranks_3_and_5(shape, layout, perm):
    with pytest.raises(SeamError) as info:
        ox.chain({"p": _producer(shape=shape), "c": _consumer(shape=shape, layout=layout)})
    (problem,) = info.value.problems
    assert f"ambiguous layout: c:x is {layout}, p:feat records no layout" in problem
    assert f"ox.adapters.transpose({perm})" in problem


def test_rank3_transposition_hint_is_a_transpose_not_a_reshape():
    """[batch,250,16] NLC into an unknown [batch,16,250]: a transpose fits; a reshape would scramble it."""
    with pytest.raises(SeamError) as info:
        ox.chain(
            {"p": _producer(shape="batch, 250, 16", layout="NLC"), "c": _consumer(shape="batch, 16, 250")}
        )
    (problem,) = info.value.problems
    assert "ox.adapters.transpose((0, 2, 1))" in problem and "reshape" not in problem
    assert "layouts={'c:x': 'NCL'}" in problem
    with pytest.raises(SeamError) as info:
        ox.chain({"p": _producer(shape="batch, 250, 16"), "c": _consumer(shape="batch, 16, 250")})
    assert "ox.adapters.transpose((0, 2, 1))" in info.value.problems[0]
    assert "reshape" not in info.value.problems[0]


def test_symbol_never_bound_to_a_size_a_transpose_would_keep():
    """[batch, T, 16] -> [batch, 16, time] with no layouts: as is, T=16 and time=16; transposed, T=time."""
    with pytest.raises(SeamError) as info:
        ox.chain({"p": _producer(shape="batch, T, 16"), "c": _consumer(shape="batch, 16, time")})
    (problem,) = info.value.problems
    assert "'T' to 16 (dim 1)" in problem and "'time' to 16 (dim 2)" in problem
    assert "transpose(0, 2, 1) fits them without binding" in problem
    assert "ox.adapters.transpose((0, 2, 1))" in problem
    merged = ox.chain(
        {"p": _producer(shape="batch, T, 16"), "c": _consumer(shape="batch, 16, time")},
        layouts={"p:feat": "NLC", "c:x": "NCL"},
    )
    assert dims(merged.graph.input[0]) == ["batch", "T", 16] and dims(merged.graph.output[0]) == [
        "batch",
        16,
        "T",
    ]


def test_symbol_bound_where_it_is_the_only_fit_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="onnxstitch.compose"):
        merged = ox.chain({"p": _producer(shape="batch, 128, 768"), "c": _consumer(shape="batch, seq, 768")})
    assert "it would bind 'seq' to 128 (dim 1)" in caplog.text
    assert dims(merged.graph.output[0]) == ["batch", 128, 768]


def test_unknown_layout_shape_mismatch_suggests_transpose():
    with pytest.raises(SeamError) as info:
        ox.chain(
            {"p": _producer(shape="batch, 8, 8, 3", layout="NHWC"), "c": _consumer(shape="batch, 3, 8, 8")}
        )
    (problem,) = info.value.problems
    assert "p:feat (float32[batch,8,8,3]) -> c:x (float32[batch,3,8,8])" in problem
    assert "ox.adapters.transpose((0, 3, 1, 2))" in problem


def test_known_layouts_but_shapes_still_differ():
    with pytest.raises(SeamError, match=r"NHWC -> NCHW needs transpose\(0, 3, 1, 2\)"):
        ox.chain(
            {
                "p": _producer(shape="batch, 8, 8, 3", layout="NHWC"),
                "c": _consumer(shape="batch, 4, 8, 8", layout="NCHW"),
            }
        )


def test_shared_input_takes_first_layout_and_transposes_for_the_others(rng, caplog):
    keras_like = _consumer(shape="batch, 8, 5, 3", layout="NHWC")
    torch_like = _consumer(shape="N, 3, 8, 5", layout="NCHW")
    with caplog.at_level(logging.INFO, logger="onnxstitch.compose"):
        merged = ox.merge({"k": keras_like, "t": torch_like}, inputs={"image": ["k:x", "t:x"]})
    assert "merged input 'image' -> t:x: inserted Transpose(0, 3, 1, 2)" in caplog.text
    assert_valid(merged)
    assert dims(merged.graph.input[0]) == ["batch", 8, 5, 3]
    assert _meta.get_layouts(merged)["image"] == "NHWC"
    assert dims(merged.graph.output[1]) == ["batch", 3, 8, 5]
    x = rng.standard_normal((2, 8, 5, 3)).astype(np.float32)
    out = run(merged, {"image": x})
    np.testing.assert_allclose(out["k.y"], np.abs(x), **TOL)
    np.testing.assert_allclose(out["t.y"], np.abs(np.transpose(x, (0, 3, 1, 2))), **TOL)
    back = ox.extract(merged, part="t")
    assert [i.name for i in back.graph.input] == ["x"]
    assert_valid(back)


def test_shared_input_unknown_first_layout_refused_with_hint():
    with pytest.raises(
        SeamError, match=r"merged input 'image' \(as k:x, float32\[batch,8,5,3\]\) -> t:x"
    ) as info:
        ox.merge(
            {"k": _consumer(shape="batch, 8, 5, 3"), "t": _consumer(shape="N, 3, 8, 5", layout="NCHW")},
            inputs={"image": ["k:x", "t:x"]},
        )
    assert "ox.adapters.transpose((0, 3, 1, 2))" in str(info.value)


def test_rank_and_static_dims_with_reshape_hints():
    with pytest.raises(SeamError, match=r"rank 4 != 2; insert ox.adapters.flatten\(\)"):
        ox.chain({"p": _producer(shape="batch, 2, 2, 3"), "c": _consumer(shape="batch, 12")})
    with pytest.raises(
        SeamError,
        match=r"static dim\(s\) \[1, 2\] differ; insert ox.adapters.reshape\(\(0, 6, 2\), rank=3\)",
    ):
        ox.chain({"p": _producer(shape="batch, 4, 3"), "c": _consumer(shape="batch, 6, 2")})


def test_every_seam_problem_reported_at_once():
    parts = {
        "p": _producer("double", "batch, 8"),
        "q": _producer("float", "batch, 5"),
        "c1": _consumer("float", "batch, 8"),
        "c2": _consumer("float", "batch, 4"),
    }
    with pytest.raises(SeamError) as info:
        ox.merge(parts, ["p:feat->c1:x", "q:feat->c2:x"])
    problems = info.value.problems
    assert len(problems) == 2
    assert any("p:feat (float64[batch,8]) -> c1:x" in p for p in problems)
    assert any("q:feat (float32[batch,5]) -> c2:x (float32[batch,4])" in p and "[1]" in p for p in problems)
    assert "2 problem(s) at the seams" in str(info.value)


def test_symbol_bound_to_two_values():
    p = _producer(shape="n, 4")
    c1, c2 = _consumer(shape="2, 4"), _consumer(shape="3, 4")
    with pytest.raises(SeamError, match="would have to be both 2 and 3"):
        ox.merge({"p": p, "c1": c1, "c2": c2}, ["p:feat->c1:x", "p:feat->c2:x"])


def test_merged_model_session_runs_batch_sizes(rng):
    merged = ox.chain({"p": _producer(shape="batch, 4"), "c": _consumer(shape="N, 4")})
    session = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], np.abs(x), **TOL)


def test_undeclared_shape_mismatch_caught_by_full_check():
    """A symbolic dim hiding a static 4: invisible at the seam, not to the full checker."""
    p = _producer()
    p.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "d"
    c = onnx.parser.parse_model(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        c (float[batch, 5] x) => (float[batch, 2] y) { y = MatMul(x, w) }"""
    )
    c.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((5, 2), np.float32), "w"))
    with pytest.raises(SeamError, match="fails the ONNX checker"):
        ox.chain({"p": p, "c": c})
