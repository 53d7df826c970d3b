"""Adapters: each one runs in onnxruntime and matches numpy; bad arguments are typed errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxstitch import _meta
from onnxstitch.compose import adapters
from onnxstitch.compose.adapters import AdapterError
from onnxstitch.errors import SpecError, StitchError

RTOL = 1e-6
ATOL = 1e-6


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["y"], feeds)
    return np.asarray(out)


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    return [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
        for d in vi.type.tensor_type.shape.dim
    ]


def _common_checks(model: onnx.ModelProto, title: str, n_inputs: int = 1) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.name == title
    assert model.doc_string == title
    assert _meta.get_source(model) == "adapter"
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    expected = ["x"] if n_inputs == 1 else [f"x{i}" for i in range(n_inputs)]
    assert [i.name for i in model.graph.input] == expected
    assert [o.name for o in model.graph.output] == ["y"]


def test_transpose_nhwc_to_nchw(rng: np.random.Generator) -> None:
    model = adapters.transpose((0, 3, 1, 2))
    _common_checks(model, "adapter.transpose(0,3,1,2)")
    assert _dims(model.graph.input[0]) == ["batch", None, None, None]
    x = rng.standard_normal((3, 5, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x=x), x.transpose(0, 3, 1, 2))


def test_transpose_moving_batch_tracks_symbol(rng: np.random.Generator) -> None:
    model = adapters.transpose([1, 0], dtype="int64")
    assert _dims(model.graph.output[0]) == [None, "batch"]
    x = rng.integers(0, 9, size=(2, 3)).astype(np.int64)
    np.testing.assert_array_equal(_run(model, x=x), x.T)


@pytest.mark.parametrize("perm", [(0, 0, 1), (1, 2), (), (0, 3, 1), (0, 1, -1)])
def test_transpose_rejects_non_permutation(perm: tuple[int, ...]) -> None:
    with pytest.raises(AdapterError, match="not a valid permutation") as info:
        adapters.transpose(perm)
    assert info.value.hint is not None and "once" in info.value.hint


def test_transpose_rejects_non_integer() -> None:
    with pytest.raises(AdapterError, match="integer"):
        adapters.transpose((0, 1.5, 2))  # type: ignore[arg-type]
    with pytest.raises(AdapterError, match="sequence of integers"):
        adapters.transpose(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("to", "src", "np_to", "np_src"),
    [
        ("float16", "float32", np.float16, np.float32),
        (np.float64, "float32", np.float64, np.float32),
        ("int64", "float32", np.int64, np.float32),
        ("float32", np.dtype("int32"), np.float32, np.int32),
        ("bool", "int64", np.bool_, np.int64),
    ],
)
def test_cast(rng: np.random.Generator, to: Any, src: Any, np_to: Any, np_src: Any) -> None:
    model = adapters.cast(to, from_dtype=src, rank=3)
    assert _dims(model.graph.input[0]) == ["batch", None, None]
    x = (rng.standard_normal((2, 3, 4)) * 10).astype(np_src)
    out = _run(model, x=x)
    assert out.dtype == np.dtype(np_to)
    np.testing.assert_array_equal(out, x.astype(np_to))


def test_cast_default_is_from_float32_rank2() -> None:
    model = adapters.cast("float16")
    _common_checks(model, "adapter.cast(float32->float16)")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert _dims(model.graph.input[0]) == ["batch", None]


def test_cast_unknown_dtype_lists_valid_ones() -> None:
    with pytest.raises(AdapterError, match="unknown or unsupported dtype 'float33'") as info:
        adapters.cast("float33")
    assert info.value.hint is not None
    for name in ("float16", "float32", "int64", "bool"):
        assert name in info.value.hint


def test_cast_to_same_dtype_is_an_error() -> None:
    with pytest.raises(AdapterError, match="already float32"):
        adapters.cast("float32")


def test_reshape_keeps_batch_and_infers(rng: np.random.Generator) -> None:
    model = adapters.reshape((0, 4, -1), rank=2)
    _common_checks(model, "adapter.reshape(0,4,-1)")
    assert _dims(model.graph.output[0]) == ["batch", 4, None]
    x = rng.standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x=x), x.reshape(5, 4, 3))


def test_reshape_static_dims(rng: np.random.Generator) -> None:
    model = adapters.reshape([-1, 6], rank=3, dtype="float64")
    assert _dims(model.graph.output[0]) == [None, 6]
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(_run(model, x=x), x.reshape(-1, 6))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((), "empty"),
        ((0, -2), "entries must be"),
        ((-1, -1), "at most one entry may be -1"),
        ((0, 0, 0), "past the input's rank 2"),
    ],
)
def test_reshape_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        adapters.reshape(shape)


def test_flatten(rng: np.random.Generator) -> None:
    model = adapters.flatten()
    _common_checks(model, "adapter.flatten()")
    assert _dims(model.graph.input[0]) == ["batch", None, None, None]
    assert _dims(model.graph.output[0]) == ["batch", None]
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x=x), x.reshape(3, -1))
    model3 = adapters.flatten(rank=3)
    np.testing.assert_array_equal(_run(model3, x=x[:, 0]), x[:, 0].reshape(3, -1))


def test_flatten_rejects_rank_1() -> None:
    with pytest.raises(AdapterError, match="rank must be at least 2"):
        adapters.flatten(rank=1)


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_normalize_default_is_nchw_channel_axis_1(rng: np.random.Generator) -> None:
    model = adapters.normalize(MEAN, STD)
    assert model.graph.name.startswith("adapter.normalize(mean=(0.485,0.456,0.406)")
    assert model.graph.name.endswith("axis=1)")
    assert _dims(model.graph.input[0]) == ["batch", 3, None, None]
    assert _meta.get_layouts(model) == {}
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(_run(model, x=x), want, rtol=RTOL, atol=ATOL)


def test_normalize_nhwc_layout_records_layout(rng: np.random.Generator) -> None:
    model = adapters.normalize(MEAN, STD, layout="NHWC")
    assert _dims(model.graph.input[0]) == ["batch", None, None, 3]
    assert _meta.get_layouts(model) == {"x": "NHWC", "y": "NHWC"}
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    want = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(_run(model, x=x), want, rtol=RTOL, atol=ATOL)
    nchw = adapters.normalize(MEAN, STD, layout="NCHW", axis=1)
    assert _meta.get_layouts(nchw) == {"x": "NCHW", "y": "NCHW"}


def test_normalize_sequence_layout_records_nlc(rng: np.random.Generator) -> None:
    model = adapters.normalize(MEAN, STD, layout="NLC", rank=3)
    assert _dims(model.graph.input[0]) == ["batch", None, 3]
    assert _meta.get_layouts(model) == {"x": "NLC", "y": "NLC"}
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    want = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(_run(model, x=x), want, rtol=RTOL, atol=ATOL)
    assert _dims(adapters.normalize(MEAN, STD, layout="NCDHW", rank=5).graph.input[0])[1] == 3


def test_normalize_axis_and_rank_and_dtype(rng: np.random.Generator) -> None:
    model = adapters.normalize([1.0, -2.0], [2.0, 4.0], axis=-1, rank=2, dtype="float64")
    x = rng.standard_normal((6, 2))
    np.testing.assert_allclose(_run(model, x=x), (x - [1.0, -2.0]) / [2.0, 4.0], rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (), "std": ()}, "mean is empty"),
        ({"mean": (1, 2), "std": (1,)}, "mean has 2 values but std has 1"),
        ({"mean": (1,), "std": (0,)}, "every std must be > 0"),
        ({"mean": (float("nan"),), "std": (1,)}, "finite"),
        ({"mean": (1,), "std": (1,), "axis": 0}, "batch dim"),
        ({"mean": (1,), "std": (1,), "axis": 4}, "out of range for rank 4"),
        ({"mean": (1,), "std": (1,), "layout": "NWHC"}, "unknown layout"),
        ({"mean": (1,), "std": (1,), "layout": "NHWC", "axis": 1}, "contradicts"),
        ({"mean": (1,), "std": (1,), "layout": "NHWC", "rank": 3}, "rank-4"),
        ({"mean": (1,), "std": (1,), "layout": "NLC"}, r"rank-3 tensors, got rank=4"),
        ({"mean": (1,), "std": (1,), "dtype": "int64"}, "unsupported dtype"),
        ({"mean": ("a",), "std": (1,)}, "sequences of numbers"),
    ],
)
def test_normalize_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        adapters.normalize(**kwargs)


def test_softmax(rng: np.random.Generator) -> None:
    model = adapters.softmax()
    _common_checks(model, "adapter.softmax(axis=-1)")
    x = rng.standard_normal((4, 10)).astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(_run(model, x=x), e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)
    model1 = adapters.softmax(1, rank=3)
    x3 = rng.standard_normal((2, 5, 3)).astype(np.float32)
    e3 = np.exp(x3 - x3.max(axis=1, keepdims=True))
    np.testing.assert_allclose(_run(model1, x=x3), e3 / e3.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_softmax_rejects_axis_out_of_range() -> None:
    with pytest.raises(AdapterError, match=r"axis 2 is out of range for rank 2") as info:
        adapters.softmax(2)
    assert info.value.hint == "use an axis in [-2, 1]"


def test_mean(rng: np.random.Generator) -> None:
    model = adapters.mean(3)
    _common_checks(model, "adapter.mean(3)", n_inputs=3)
    xs = [rng.standard_normal((4, 7)).astype(np.float32) for _ in range(3)]
    out = _run(model, x0=xs[0], x1=xs[1], x2=xs[2])
    np.testing.assert_allclose(out, (xs[0] + xs[1] + xs[2]) / 3, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [0, 1, -3])
def test_mean_needs_two_inputs(n: int) -> None:
    with pytest.raises(AdapterError, match="n must be at least 2"):
        adapters.mean(n)


def test_concat(rng: np.random.Generator) -> None:
    model = adapters.concat(2)
    _common_checks(model, "adapter.concat(2, axis=-1)", n_inputs=2)
    a = rng.standard_normal((3, 2)).astype(np.float32)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x0=a, x1=b), np.concatenate([a, b], axis=-1))
    model4 = adapters.concat(3, 1, rank=4, dtype="int32")
    xs = [rng.integers(0, 5, (2, i + 1, 3, 3)).astype(np.int32) for i in range(3)]
    np.testing.assert_array_equal(_run(model4, x0=xs[0], x1=xs[1], x2=xs[2]), np.concatenate(xs, axis=1))


@pytest.mark.parametrize("axis", [0, -2])
def test_concat_rejects_batch_axis(axis: int) -> None:
    with pytest.raises(AdapterError, match="batch axis"):
        adapters.concat(2, axis)


def test_adapter_error_is_a_spec_error() -> None:
    assert issubclass(AdapterError, SpecError)
    assert issubclass(AdapterError, StitchError)


def test_each_call_returns_a_new_model() -> None:
    a = adapters.transpose((0, 2, 1))
    b = adapters.transpose((0, 2, 1))
    assert a is not b
    a.graph.name = "changed"
    assert b.graph.name == "adapter.transpose(0,2,1)"


def test_builders_table_names_every_adapter() -> None:
    assert set(adapters.BUILDERS) == {
        "transpose",
        "cast",
        "reshape",
        "flatten",
        "normalize",
        "softmax",
        "mean",
        "concat",
    }
    assert all(callable(f) for f in adapters.BUILDERS.values())


def test_public_access_through_ox() -> None:
    import onnxstitch as ox

    assert ox.adapters.transpose is adapters.transpose


def test_softmax_and_mean_dtype_and_rank(rng: np.random.Generator) -> None:
    soft = adapters.softmax(dtype="float64", rank=3)
    assert _dims(soft.graph.input[0]) == ["batch", None, None]
    x = rng.standard_normal((2, 3, 4))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(_run(soft, x=x), e / e.sum(axis=-1, keepdims=True), rtol=1e-12)
    avg = adapters.mean(2, dtype=np.float16, rank=4)
    assert _dims(avg.graph.input[1]) == ["batch", None, None, None]
    a, b = (rng.standard_normal((2, 3, 2, 2)).astype(np.float16) for _ in range(2))
    out = _run(avg, x0=a, x1=b)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, (a.astype(np.float32) + b) / 2, rtol=1e-3, atol=1e-3)
    with pytest.raises(AdapterError, match="unsupported dtype 'int64'"):
        adapters.mean(2, dtype="int64")
    with pytest.raises(AdapterError, match="rank must be at least 1"):
        adapters.softmax(rank=0)


def _part(text: str) -> onnx.ModelProto:
    import onnx.parser

    return onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 18]>\n' + text)


def test_adapters_chain_with_parts_and_keep_the_batch_symbol(rng: np.random.Generator) -> None:
    import onnxstitch as ox

    producer = _part(
        "p (float[batch,5,6,2] image) => (double[batch,5,6,2] feat) { feat = Cast<to=11>(image) }"
    )
    consumer = _part("c (float[batch,60] x) => (float[batch,60] y) { y = Neg(x) }")
    merged = ox.chain(
        {
            "p": producer,
            "to_f32": adapters.cast("float32", from_dtype="float64", rank=4),  # what the seam error suggests
            "to_nchw": adapters.transpose((0, 3, 1, 2)),
            "flat": adapters.flatten(),
            "c": consumer,
        }
    )
    onnx.checker.check_model(merged, full_check=True)
    assert _dims(merged.graph.input[0])[0] == "batch"
    assert _dims(merged.graph.output[0]) == ["batch", 60]
    x = rng.standard_normal((3, 5, 6, 2)).astype(np.float32)
    sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x})
    np.testing.assert_array_equal(out, -x.transpose(0, 3, 1, 2).reshape(3, -1))
