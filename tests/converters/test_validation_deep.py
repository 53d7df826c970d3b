"""Default validation on deep models: right conversions pass, real conversion bugs still fail.

A torch ResNet-18 and a Keras residual conv net, both with trained-like BatchNorm statistics (outputs
of order 1), are converted with default validation, which must pass: float32 reassociation through
dozens of layers leaves errors of ~1e-5 on near-zero values, which the old elementwise default
(``|err| <= 1e-5 + 1e-4 * |ref|``) refused on the Keras net. Then each kind of conversion bug is
planted in the converted graph (a wrong layout, a dropped activation, a swapped weight) or in the
export (a wrong BatchNorm epsilon, folded into the convolutions), and validation must fail.
Built in code, seeded; nothing is downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")  # a failure in CI: see tests/conftest.py
keras = pytest.importorskip("keras")

from torch_models import trained_like  # noqa: E402
from torch_resnet import ResNet18  # noqa: E402

import onnxstitch as ox  # noqa: E402
from onnxstitch.converters import _common  # noqa: E402
from onnxstitch.errors import ValidationError  # noqa: E402

pytestmark = pytest.mark.slow
BUGS = ["wrong layout", "wrong BatchNorm epsilon", "dropped activation", "swapped weight"]


# ------------------------------------------------------------------------------- planted bugs
def _transposed_input(model: onnx.ModelProto, perm: list[int]) -> onnx.ModelProto:
    """The image read with two spatial axes swapped (same shape for a square image)."""
    bad = copy.deepcopy(model)
    name = bad.graph.input[0].name
    for node in bad.graph.node:
        node.input[:] = [f"{name}_T" if i == name else i for i in node.input]
    bad.graph.node.insert(0, helper.make_node("Transpose", [name], [f"{name}_T"], perm=perm))
    return bad


def _dropped_activation(model: onnx.ModelProto) -> onnx.ModelProto:
    """One Relu in the middle of the net left out."""
    bad = copy.deepcopy(model)
    relus = [n for n in bad.graph.node if n.op_type == "Relu"]
    relu = relus[len(relus) // 2]
    for node in bad.graph.node:
        node.input[:] = [relu.input[0] if i == relu.output[0] else i for i in node.input]
    bad.graph.node.remove(relu)
    return bad


def _swapped_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    """The weights of two convolutions of the same shape exchanged."""
    bad = copy.deepcopy(model)
    inits = {i.name: i for i in bad.graph.initializer}
    weights = [inits[n.input[1]] for n in bad.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    seen: dict[tuple[int, ...], onnx.TensorProto] = {}
    for w in weights:
        shape = tuple(w.dims)
        if shape in seen:
            a, b = numpy_helper.to_array(seen[shape]), numpy_helper.to_array(w)
            seen[shape].CopyFrom(numpy_helper.from_array(b, seen[shape].name))
            w.CopyFrom(numpy_helper.from_array(a, w.name))
            return bad
        seen[shape] = w
    raise AssertionError("no two convolutions share a weight shape")


def _margins(report: Any) -> list[float]:
    """Each row's max abs error as a fraction of what it is allowed."""
    return [r.max_abs / r.bound for r in report.rows]


def _check_bugs(
    bug: str, model: onnx.ModelProto, wrong_eps: Callable[[], onnx.ModelProto], perm: list[int], **kw: Any
) -> None:
    bad = {
        "wrong layout": lambda: _transposed_input(model, perm),
        "wrong BatchNorm epsilon": wrong_eps,
        "dropped activation": lambda: _dropped_activation(model),
        "swapped weight": lambda: _swapped_weight(model),
    }[bug]()
    with pytest.raises(ValidationError) as info:
        _common.validate(bad, what=bug, **kw)
    assert min(_margins(info.value.report)) > 10  # not a near miss: far beyond float noise


# ------------------------------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def resnet() -> dict[str, Any]:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    net = trained_like(ResNet18(), image)
    model = ox.from_torch(net, image)  # default validation: the examples, then batch 1 and 7
    feeds = _common.example_feed_sets(model, {"image": image.numpy()})

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = net(torch.from_numpy(x)).numpy()
        return out

    report = _common.validate(model, reference, what="resnet", feeds=feeds)
    return {
        "image": image,
        "net": net,
        "model": model,
        "feeds": feeds,
        "reference": reference,
        "report": report,
    }


def test_torch_resnet_passes_default_validation_with_room(resnet: dict[str, Any]) -> None:
    assert max(_margins(resnet["report"])) < 0.2
    assert max(r.scale for r in resnet["report"].rows) > 1  # logits of order 1, not vacuous


@pytest.mark.parametrize("bug", BUGS)
def test_torch_resnet_conversion_bugs_fail_validation(resnet: dict[str, Any], bug: str) -> None:
    def wrong_eps() -> onnx.ModelProto:
        net = copy.deepcopy(resnet["net"])
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 1e-3  # torch's is 1e-5 (Keras's default, a plausible converter slip)
        return ox.from_torch(net, resnet["image"], validate=False)

    _check_bugs(
        bug,
        resnet["model"],
        wrong_eps,
        [0, 1, 3, 2],
        reference=resnet["reference"],
        feeds=resnet["feeds"],
    )


# ------------------------------------------------------------------------------------- Keras
def _keras_net(epsilon: float) -> Any:
    """A residual conv net (8 blocks, 32..256 channels) with trained-like BatchNorm statistics."""
    keras.utils.set_random_seed(0)
    layers = keras.layers

    def bn(x: Any) -> Any:
        return layers.BatchNormalization(epsilon=epsilon)(x)

    def block(x: Any, channels: int, stride: int) -> Any:
        y = layers.ReLU()(bn(layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False)(x)))
        y = bn(layers.Conv2D(channels, 3, padding="same", use_bias=False)(y))
        if stride != 1 or x.shape[-1] != channels:
            x = bn(layers.Conv2D(channels, 1, strides=stride, use_bias=False)(x))
        return layers.ReLU()(layers.Add()([x, y]))

    image = keras.Input((64, 64, 3), name="image")
    x = layers.ReLU()(bn(layers.Conv2D(32, 7, strides=2, padding="same", use_bias=False)(image)))
    for channels, stride in [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]:
        x = block(x, channels, stride)
    logits = layers.Dense(1000, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(image, logits)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.0  # the next training-mode pass sets the statistics to its batch's
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape))
    model(rng.random((8, 64, 64, 3), dtype=np.float32), training=True)
    return model


@pytest.fixture(scope="module")
def keras_net() -> dict[str, Any]:
    net = _keras_net(epsilon=1e-3)
    model = ox.from_keras(net)  # default validation (seeded random images at batch 1 and 7)

    def reference(x: np.ndarray) -> np.ndarray:
        return np.asarray(net(x, training=False))

    report = _common.validate(model, reference, what="keras net")
    return {"net": net, "model": model, "reference": reference, "report": report}


def test_keras_deep_net_passes_default_validation_but_not_elementwise(keras_net: dict[str, Any]) -> None:
    """The elementwise rule at the same tolerances refuses a right conversion (issue 11, item 5).

    How far float32 reassociation through this net strays depends on the CPU's kernels: ~2e-5 on
    near-zero logits, right at the elementwise bound (``1e-5 + 1e-4 * |ref|``) on an AMD EPYC, past it
    on the Intel machine of issue 11. So the reference here is the Keras net plus reassociation noise
    of that size, 3e-5 on every logit under 0.05 in magnitude, kept deterministic: the scaled default
    still passes with a wide margin, the elementwise rule refuses.
    """
    assert max(_margins(keras_net["report"])) < 0.2

    def noisy(x: np.ndarray) -> np.ndarray:
        out = keras_net["reference"](x)
        signs = np.where(np.arange(out.size).reshape(out.shape) % 2 == 0, 1.0, -1.0).astype(out.dtype)
        return out + np.where(np.abs(out) < 0.05, 3e-5 * signs, 0.0).astype(out.dtype)

    report = _common.validate(keras_net["model"], noisy, what="keras net")
    assert max(_margins(report)) < 0.2
    with pytest.raises(ValidationError, match="elements out of tolerance"):
        _common.validate(keras_net["model"], noisy, what="keras net", metric="elementwise")


@pytest.mark.parametrize("bug", BUGS)
def test_keras_deep_net_conversion_bugs_fail_validation(keras_net: dict[str, Any], bug: str) -> None:
    def wrong_eps() -> onnx.ModelProto:
        return ox.from_keras(_keras_net(epsilon=1e-5), validate=False)  # torch's default, not Keras's

    _check_bugs(bug, keras_net["model"], wrong_eps, [0, 2, 1, 3], reference=keras_net["reference"])
