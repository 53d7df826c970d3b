"""Layouts across frameworks: a Keras ``Conv1D`` encoder (NLC) into a torch ``Conv1d`` head (NCL), and
a Keras Dense on a cube (no layout) into a torch ``Conv2d``.

The reference is what a user writes by hand: the Keras encoder, ``permute(0, 2, 1)``, the torch head.
Before layouts were recorded at rank 3, 16 time steps merged with no Transpose (the un-permuted,
wrong chain), a dynamic length bound both time symbols to 16, and 250 steps suggested a reshape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import onnxstitch as ox  # noqa: E402
from onnxstitch import _meta  # noqa: E402
from onnxstitch.errors import SeamError  # noqa: E402

pytestmark = pytest.mark.slow

RTOL, ATOL = 1e-4, 1e-5
FEATURES, CHANNELS = 8, 16


class Conv1dHead(torch.nn.Module):
    """NCL sequence (16 channels) -> per-step conv -> mean over time -> 4 scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(CHANNELS, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=2))


def _encoder(steps: int | None) -> Any:
    keras.utils.set_random_seed(0)
    frames = keras.Input((steps, FEATURES), name="frames")
    out = keras.layers.Conv1D(CHANNELS, 3, padding="same", activation="relu", name="encoded")(frames)
    return keras.Model(frames, out)


@pytest.fixture(scope="module")
def head() -> Conv1dHead:
    return Conv1dHead().eval()


_CONVERTED: dict[int | None, tuple[Any, onnx.ModelProto, onnx.ModelProto]] = {}


def _convert(head: Conv1dHead, steps: int | None) -> tuple[Any, onnx.ModelProto, onnx.ModelProto]:
    """Keras encoder, its ONNX, the head's ONNX: converted once per length in this module."""
    if steps not in _CONVERTED:
        _CONVERTED[steps] = _converted(head, steps)
    return _CONVERTED[steps]


def _converted(head: Conv1dHead, steps: int | None) -> tuple[Any, onnx.ModelProto, onnx.ModelProto]:
    encoder = _encoder(steps)
    k = ox.from_keras(encoder)
    example = torch.randn(2, CHANNELS, steps or 12)
    dynamic = {"x": {0: "batch", 2: "time"}} if steps is None else None
    t = ox.from_torch(head, (example,), input_names=["x"], dynamic_dims=dynamic)
    return encoder, k, t


def _reference(encoder: Any, head: Conv1dHead, x: np.ndarray) -> np.ndarray:
    encoded = np.asarray(encoder(x, training=False))
    with torch.inference_mode():
        return head(torch.from_numpy(np.transpose(encoded, (0, 2, 1)).copy())).numpy()


def _transposes(model: onnx.ModelProto) -> list[list[int]]:
    return [
        list(n.attribute[0].ints)
        for n in model.graph.node
        if n.op_type == "Transpose" and (_meta.get_part(n) or "").endswith(".adapter")
    ]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ox.Session(model, device="cpu")
    return next(iter(session.run({"frames": x}).values()))


@pytest.mark.parametrize("steps", [16, 250])
def test_keras_conv1d_into_torch_conv1d_static_steps(head: Conv1dHead, steps: int) -> None:
    """16 steps: the shapes coincide (C = L = 16); 250: they do not. Both get the Transpose."""
    encoder, k, t = _convert(head, steps)
    assert _meta.get_layouts(k) == {"frames": "NLC", "encoded": "NLC"}
    assert _meta.get_layouts(t) == {"x": "NCL"}
    merged = ox.chain({"enc": k, "head": t})
    assert _transposes(merged) == [[0, 2, 1]]
    x = np.random.default_rng(1).standard_normal((3, steps, FEATURES)).astype(np.float32)
    want = _reference(encoder, head, x)
    np.testing.assert_allclose(_run(merged, x), want, rtol=RTOL, atol=ATOL)
    if steps == CHANNELS:  # what the merge built before: the un-permuted hand-off, wrong numbers
        unpermuted = ox.chain({"enc": k, "head": t}, layouts={"head:x": "NLC"})
        assert not _transposes(unpermuted)
        assert not np.allclose(_run(unpermuted, x), want, rtol=RTOL, atol=1e-3)


def test_keras_conv1d_into_torch_conv1d_dynamic_length(head: Conv1dHead) -> None:
    """[batch, frames_dim1, 16] -> [batch, 16, time]: the time symbols meet, nothing is bound to 16."""
    encoder, k, t = _convert(head, None)
    merged = ox.chain({"enc": k, "head": t})
    assert _transposes(merged) == [[0, 2, 1]]
    (inp,) = merged.graph.input
    length = inp.type.tensor_type.shape.dim[1]
    assert length.dim_param and not length.HasField("dim_value")
    rng = np.random.default_rng(2)
    for steps in (5, 16, 23):
        x = rng.standard_normal((2, steps, FEATURES)).astype(np.float32)
        np.testing.assert_allclose(_run(merged, x), _reference(encoder, head, x), rtol=RTOL, atol=ATOL)


def test_unrecorded_torch_side_is_refused_with_the_transpose(head: Conv1dHead) -> None:
    """The same head as a plain ONNX file (no layout): 250 steps -> suggests transpose, not reshape."""
    _, k, t = _convert(head, 250)
    plain = onnx.ModelProto()
    plain.CopyFrom(t)
    _meta.del_prop(plain, _meta.LAYOUT_PREFIX + "x")
    with pytest.raises(SeamError) as info:
        ox.chain({"enc": k, "head": plain})
    (problem,) = info.value.problems
    assert "ox.adapters.transpose((0, 2, 1))" in problem and "reshape" not in problem
    assert "layouts={'head:x': 'NCL'}" in problem
    assert _transposes(ox.chain({"enc": k, "head": plain}, layouts={"head:x": "NCL"})) == [[0, 2, 1]]


def test_keras_dense_on_a_cube_into_torch_conv2d_is_not_transposed_by_guess() -> None:
    """The issue's case: a Keras Dense on (4, 4, 4) recorded no layout before being stamped NHWC
    from ``image_data_format()``; chained into a torch Conv2d it got a Transpose the user never
    wrote. Now nothing is recorded, the seam is ambiguous, and a declared layout feeds it as it is."""
    keras.utils.set_random_seed(0)
    cube = keras.Input((4, 4, 4), name="cube")
    dense = keras.Model(cube, keras.layers.Dense(4, name="mixed")(cube))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 2, 1).eval()
    k = ox.from_keras(dense)
    t = ox.from_torch(conv, (torch.randn(2, 4, 4, 4),), input_names=["x"])
    assert _meta.get_layouts(k) == {} and _meta.get_layouts(t) == {"x": "NCHW", "output": "NCHW"}
    with pytest.raises(SeamError, match="ambiguous layout: head:x is NCHW, dense:mixed records no layout"):
        ox.chain({"dense": k, "head": t})
    merged = ox.chain({"dense": k, "head": t}, layouts={"dense:mixed": "NCHW"})
    assert not _transposes(merged)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype(np.float32)
    with torch.inference_mode():  # the user's own hand-off: the tensor as it is
        want = conv(torch.from_numpy(np.array(dense(x, training=False)))).numpy()
    got = next(iter(ox.Session(merged, device="cpu").run({"cube": x}).values()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
