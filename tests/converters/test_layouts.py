"""Layouts are recorded from evidence only, at ranks 3, 4 and 5, by both converters.

Evidence: the tensor feeds or leaves an op with a data format (convolution, pooling, a channel
normalization...). A Dense output, an attention tensor or a permute's output records nothing;
``keras.config.image_data_format()`` alone is not evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import onnx.parser
import pytest

from onnxstitch import _layouts, _meta
from onnxstitch.converters import _common
from onnxstitch.errors import ConversionError

# ------------------------------------------------------------------------------ the ONNX-graph rule


def _graph(body: str, signature: str, opset: int = 18) -> onnx.ModelProto:
    return onnx.parser.parse_model(
        f'<ir_version: 8, opset_import: ["" : {opset}]>\ng {signature} {{\n{body}\n}}'
    )


def test_names_and_perms() -> None:
    assert [_layouts.rank_of(n) for n in _meta.LAYOUTS] == [3, 3, 4, 4, 5, 5]
    assert _layouts.perm("NLC", "NCL") == (0, 2, 1) == _layouts.perm("NCL", "NLC")
    assert _layouts.perm("NHWC", "NCHW") == (0, 3, 1, 2) and _layouts.perm("NCHW", "NHWC") == (0, 2, 3, 1)
    assert _layouts.perm("NDHWC", "NCDHW") == (0, 4, 1, 2, 3)
    assert _layouts.perm("NCDHW", "NDHWC") == (0, 2, 3, 4, 1)
    assert _layouts.other("NCL") == "NLC" and _layouts.for_rank(2) == ()
    with pytest.raises(ValueError, match="different ranks"):
        _layouts.perm("NLC", "NCHW")


def test_keras_style_conv1d_pattern_both_opsets() -> None:
    """tf2onnx's Conv1D: Unsqueeze -> Transpose(0,3,1,2) -> Conv -> Squeeze -> Transpose(0,2,1)."""
    new = _graph(
        """
        ax = Constant<value = int64[1] {1}>()
        u = Unsqueeze(x, ax)
        t = Transpose<perm = [0, 3, 1, 2]>(u)
        c = Conv(t, w)
        ax2 = Constant<value = int64[1] {2}>()
        s = Squeeze(c, ax2)
        y = Transpose<perm = [0, 2, 1]>(s)""",
        "(float[N, 16, 8] x, float[4, 8, 1, 3] w) => (float[N, 14, 4] y)",
    )
    assert _layouts.detect(new) == {"x": "NLC", "y": "NLC"}
    old = _graph(
        """
        u = Unsqueeze<axes = [2]>(x)
        c = Conv(u, w)
        y = Squeeze<axes = [2]>(c)""",
        "(float[N, 8, 16] x, float[4, 8, 1, 3] w) => (float[N, 4, 14] y)",
        opset=11,
    )
    assert _layouts.detect(old) == {"x": "NCL", "y": "NCL"}


@pytest.mark.parametrize(
    ("body", "signature", "expected"),
    [
        (  # rank 5, channels last through the exporter's transposes, and an elementwise op
            "r = Relu(x)\nt = Transpose<perm = [0, 4, 1, 2, 3]>(r)\nc = Conv(t, w)\n"
            "y = Transpose<perm = [0, 2, 3, 4, 1]>(c)",
            "(float[N, 4, 4, 4, 2] x, float[3, 2, 1, 1, 1] w) => (float[N, 4, 4, 4, 3] y)",
            {"x": "NDHWC", "y": "NDHWC"},
        ),
        (  # batch norm and pooling: channels first
            "b = BatchNormalization(x, s, o, m, v)\ny = MaxPool<kernel_shape = [2, 2]>(b)",
            "(float[N, 3, 4, 4] x, float[3] s, float[3] o, float[3] m, float[3] v) => (float[N, 3, 3, 3] y)",
            {"x": "NCHW", "y": "NCHW"},
        ),
        (  # a Dense on a rank-4 tensor: MatMul is no evidence
            "y = MatMul(x, w)",
            "(float[N, 4, 4, 4] x, float[4, 4] w) => (float[N, 4, 4, 4] y)",
            {},
        ),
        (  # attention scores [B, heads, T, D]
            "k = Transpose<perm = [0, 1, 3, 2]>(x)\ns = MatMul(x, k)\np = Softmax(s)\ny = MatMul(p, x)",
            "(float[N, 2, 5, 8] x) => (float[N, 2, 5, 8] y)",
            {},
        ),
        (  # a permute alone
            "y = Transpose<perm = [0, 3, 1, 2]>(x)",
            "(float[N, 4, 4, 4] x) => (float[N, 4, 4, 4] y)",
            {},
        ),
        (  # a reshape breaks the axes
            "sh = Constant<value = int64[4] {0, 4, 4, 4}>()\nr = Reshape(x, sh)\ny = Conv(r, w)",
            "(float[N, 64] x, float[2, 4, 1, 1] w) => (float[N, 2, 4, 4] y)",
            {"y": "NCHW"},
        ),
        (  # read channels-first by one conv and channels-last by another: no layout
            "a = Conv(x, w)\nt = Transpose<perm = [0, 3, 1, 2]>(x)\nb = Conv(t, w)",
            "(float[N, 4, 4, 4] x, float[2, 4, 1, 1] w) => (float[N, 2, 4, 4] a, float[N, 2, 4, 4] b)",
            {"a": "NCHW", "b": "NCHW"},
        ),
        (  # a graph input feeding the conv's weights (rank 4 too) is no evidence
            "y = Conv(d, k)",
            "(float[2, 4, 1, 1] k, float[N, 4, 4, 4] d) => (float[N, 2, 4, 4] y)",
            {"d": "NCHW", "y": "NCHW"},
        ),
    ],
)
def test_detect(body: str, signature: str, expected: dict[str, str]) -> None:
    assert _layouts.detect(_graph(body, signature)) == expected


def test_record_layouts_checks_the_rank() -> None:
    model = _graph("y = Relu(x)", "(float[N, 4, 4] x) => (float[N, 4, 4] y)")
    assert _meta.get_layouts(_common.record_layouts(model, {"x": "NCL", "y": "NLC"})) == {
        "x": "NCL",
        "y": "NLC",
    }
    with pytest.raises(
        ConversionError, match=r"NHWC describes rank-4 tensors, this one has rank 3 \(NLC, NCL\)"
    ):
        _common.record_layouts(model, {"x": "NHWC"})


# ----------------------------------------------------------------------------------------- Keras
def _keras_model() -> Any:
    """One model, one input and output per case (one conversion): ``<case>`` -> ``<case>_out``."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers

    def split_reads(x: Any, out: str) -> Any:
        a = layers.GlobalAveragePooling2D(data_format="channels_first")(x)
        b = layers.GlobalAveragePooling2D()(layers.Conv2D(2, 1)(x))
        return layers.Concatenate(name=out)([a, b])

    cases: dict[str, tuple[tuple[int, ...], Callable[[Any, str], Any]]] = {
        "dense": ((4, 4, 4), lambda x, o: layers.Dense(4, name=o)(x)),  # the case
        "attention": ((5, 8), lambda x, o: layers.MultiHeadAttention(2, 4, name=o)(x, x)),
        "heads": ((2, 5, 8), lambda x, o: layers.Dense(8, name=o)(x)),  # [B, heads, T, D]
        "permute": ((4, 4, 4), lambda x, o: layers.Permute((3, 1, 2), name=o)(x)),
        "conv1d": ((16, 8), lambda x, o: layers.Conv1D(4, 3, padding="same", name=o)(x)),
        "conv1d_first": ((8, 16), lambda x, o: layers.Conv1D(4, 3, data_format="channels_first", name=o)(x)),
        "conv3d": ((4, 4, 4, 2), lambda x, o: layers.Conv3D(3, 3, padding="same", name=o)(x)),
        "batchnorm": ((4, 4, 3), lambda x, o: layers.ReLU(name=o)(layers.BatchNormalization()(x))),
        "pool_first": (
            (3, 5, 5),
            lambda x, o: layers.GlobalAveragePooling2D(data_format="channels_first", name=o)(x),
        ),
        "upsample": ((4, 4, 3), lambda x, o: layers.UpSampling2D(name=o)(x)),
        "split_reads": ((4, 4, 4), split_reads),
        "conv_permute": ((4, 4, 3), lambda x, o: layers.Permute((3, 1, 2), name=o)(layers.Conv2D(2, 1)(x))),
    }
    inputs = [keras.Input(shape, name=name) for name, (shape, _) in cases.items()]
    outputs = [build(x, f"{name}_out") for x, (name, (_, build)) in zip(inputs, cases.items(), strict=True)]
    return keras.Model(inputs, outputs, name="cases")


KERAS_EXPECTED = {
    "dense": {},
    "attention": {},
    "heads": {},
    "permute": {},
    "conv1d": {"conv1d": "NLC", "conv1d_out": "NLC"},
    "conv1d_first": {"conv1d_first": "NCL", "conv1d_first_out": "NCL"},
    "conv3d": {"conv3d": "NDHWC", "conv3d_out": "NDHWC"},
    "batchnorm": {"batchnorm": "NHWC", "batchnorm_out": "NHWC"},  # the layer's axis: tf2onnx leaves Mul/Add
    "pool_first": {"pool_first": "NCHW"},  # tf2onnx leaves a ReduceMean: the layer's data_format says it
    "upsample": {"upsample": "NHWC", "upsample_out": "NHWC"},
    "split_reads": {},  # read channels-first by one layer and channels-last by another
    "conv_permute": {"conv_permute": "NHWC", "conv_permute_out": "NCHW"},  # a conv's output, moved
}


@pytest.fixture(scope="module")
def keras_layouts() -> dict[str, str]:
    pytest.importorskip("keras")
    from onnxstitch.converters import from_keras

    return _meta.get_layouts(from_keras(_keras_model(), validate=False))


@pytest.mark.parametrize("case", list(KERAS_EXPECTED))
def test_keras_layouts_from_evidence(keras_layouts: dict[str, str], case: str) -> None:
    mine = {k: v for k, v in keras_layouts.items() if k in (case, f"{case}_out")}
    assert mine == KERAS_EXPECTED[case]


def test_keras_image_data_format_alone_is_no_evidence() -> None:
    pytest.importorskip("keras")
    import keras

    from onnxstitch.converters import from_keras

    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        x = keras.Input((4, 4, 4), name="x")
        model = keras.Model(x, keras.layers.Dense(4, name="dense")(x))
        assert _meta.get_layouts(from_keras(model, validate=False)) == {}
    finally:
        keras.config.set_image_data_format(before)


# ----------------------------------------------------------------------------------------- torch
TORCH_SHAPES = {
    "conv1d": (2, 16, 10),
    "conv3d": (2, 2, 4, 4, 4),
    "bn1d": (2, 4, 6),
    "dense4d": (2, 4, 4, 4),
    "heads": (2, 2, 5, 8),
    "permute": (2, 4, 4, 4),
    "conv_permute": (2, 3, 4, 4),
}
TORCH_EXPECTED = {  # output i is the case's: output_0 ... output_6
    "conv1d": {"conv1d": "NCL", "output_0": "NCL"},
    "conv3d": {"conv3d": "NCDHW", "output_1": "NCDHW"},
    "bn1d": {"bn1d": "NCL", "output_2": "NCL"},
    "dense4d": {},
    "heads": {},  # attention over [B, heads, T, D]
    "permute": {},
    "conv_permute": {"conv_permute": "NCHW", "output_6": "NHWC"},
}


def _torch_module() -> Any:
    import torch

    nn = torch.nn

    class Cases(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1d, self.conv3d = nn.Conv1d(16, 4, 3, padding=1), nn.Conv3d(2, 3, 3, padding=1)
            self.bn1d, self.dense, self.q = nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Linear(8, 8)
            self.conv2d = nn.Conv2d(3, 4, 1)

        def forward(self, *x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            attention = torch.softmax(self.q(x[4]) @ x[4].transpose(-1, -2), -1) @ x[4]
            return (
                self.conv1d(x[0]),
                self.conv3d(x[1]),
                self.bn1d(x[2]),
                self.dense(x[3]),
                attention,
                x[5].permute(0, 2, 3, 1),
                self.conv2d(x[6]).permute(0, 2, 3, 1),
            )

    torch.manual_seed(0)
    return Cases().eval()


@pytest.fixture(scope="module")
def torch_layouts() -> dict[str, str]:
    torch = pytest.importorskip("torch")
    from onnxstitch.converters import from_torch

    examples = tuple(torch.randn(*shape) for shape in TORCH_SHAPES.values())
    return _meta.get_layouts(
        from_torch(_torch_module(), examples, input_names=list(TORCH_SHAPES), validate=False)
    )


@pytest.mark.parametrize("case", list(TORCH_EXPECTED))
def test_torch_layouts_from_evidence(torch_layouts: dict[str, str], case: str) -> None:
    index = list(TORCH_SHAPES).index(case)
    mine = {k: v for k, v in torch_layouts.items() if k in (case, f"output_{index}")}
    assert mine == TORCH_EXPECTED[case]
