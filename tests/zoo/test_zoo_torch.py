"""A torch ResNet-18 (written here: torchvision is not installed, see PITFALLS.md) with BatchNorm
statistics as after training, converted with default validation, merged with a Keras head, and
checked against the native torch → Keras chain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from zoo_helpers import (
    assert_order_one,
    check,
    dims,
    feeds_at,
    inserted_adapters,
    keras_call,
    torch_batchnorm_statistics,
    torch_call,
)

import onnxstitch as ox

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from torch_resnet import ResNet18  # noqa: E402

pytestmark = pytest.mark.slow

nn = torch.nn
SIZE = 64


class Trunk(nn.Module):
    """The ResNet's feature extractor (shares the modules, no copy)."""

    def __init__(self, net: ResNet18) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.features(image)


def _images(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    return {"image": rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)}


def _keras_head() -> Any:
    """NHWC feature map (2x2x512) -> 5 scores."""
    inp = keras.Input((2, 2, 512), name="features")
    x = keras.layers.Conv2D(16, 1, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5, name="scores")(x))


@pytest.fixture(scope="module")
def resnet18() -> ResNet18:
    torch.manual_seed(0)
    net = ResNet18()
    images = torch.from_numpy(_images(np.random.default_rng(1), 16)["image"])
    assert torch_batchnorm_statistics(net, images) == 20  # every BatchNorm of ResNet-18
    return net


def test_resnet18_logits_convert_with_default_validation(resnet18: ResNet18) -> None:
    """The whole classifier, as `onnxstitch convert torch` of a model factory would export it."""
    x = torch.from_numpy(_images(np.random.default_rng(2), 1)["image"])
    logits = torch_call(resnet18, x.numpy())
    assert_order_one("resnet18 logits", logits)
    converted = ox.from_torch(resnet18, (x,), output_names=["logits"])  # default validation on
    assert dims(converted.graph.output[0]) == ["batch", 1000]
    report = ox.verify(converted, lambda image: torch_call(resnet18, image), feeds_at(_images, (1, 4)))
    report.raise_for_mismatch()


def test_resnet18_trunk_into_keras_head(resnet18: ResNet18) -> None:
    trunk = Trunk(resnet18).eval()
    example = torch.from_numpy(_images(np.random.default_rng(3), 2)["image"])
    trunk_onnx = ox.from_torch(trunk, (example,), output_names=["features"])  # default validation on
    keras.utils.set_random_seed(0)
    head = _keras_head()
    merged = ox.chain({"trunk": trunk_onnx, "head": ox.from_keras(head)})
    assert inserted_adapters(merged) == [("Transpose", [0, 2, 3, 1])]  # NCHW -> NHWC at the seam
    assert dims(merged.graph.input[0])[0] == dims(merged.graph.output[0])[0] == "batch"

    def reference(image: np.ndarray) -> np.ndarray:
        return keras_call(head, torch_call(trunk, image).transpose(0, 2, 3, 1))  # the user's own permute

    feeds = feeds_at(_images, (1, 5))
    assert_order_one("resnet18 features", torch_call(trunk, feeds[1]["image"]))
    check(merged, reference, feeds)
