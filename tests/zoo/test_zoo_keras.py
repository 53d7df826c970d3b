"""keras.applications and a Keras transformer block, converted with default validation, merged with
torch parts, and checked against the native Keras → torch chain.

Random initialisation (``weights=None``), no downloads; BatchNorm statistics as after training
(one training-mode pass, see ``zoo_helpers.keras_batchnorm_statistics``) so that outputs are of
order 1. 64x64 images (the smallest the five-fold downsampling leaves 2x2 of); models with built-in
preprocessing (EfficientNet, EfficientNetV2, MobileNetV3, ConvNeXt) get pixels in 0..255. The
statistics come from images of varied brightness and contrast: statistics of one narrow kind of
image (say uniform noise) leave channels of near-zero variance, whose huge gains make any other
input (the converters' default validation feeds included) a chaotic, ill-conditioned regime where
a 1e-4 change of the input moves EfficientNet's outputs by 5%.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from zoo_helpers import (
    assert_order_one,
    check,
    dims,
    feeds_at,
    inserted_adapters,
    keras_batchnorm_statistics,
    keras_call,
    torch_call,
)

import onnxstitch as ox

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

pytestmark = pytest.mark.slow

SIZE = 64  # input images are SIZE x SIZE x 3; the backbones' feature maps are 2x2
BATCHES = (1, 5)


# ----------------------------------------------------------------------------------- torch heads
class ConvHead(torch.nn.Module):
    """An NCHW feature map -> 5 scores (1x1 conv, global mean, linear)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 16, 1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(features)).mean(dim=(2, 3)))


class MlpHead(torch.nn.Module):
    """Pooled features -> 5 scores."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(channels, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


# ----------------------------------------------------------------------------------- the cases
def _photos(rng: np.random.Generator, batch: int, low: float, high: float, contrast: float) -> np.ndarray:
    """Images whose brightness and contrast vary from image to image, as in any real data set."""
    shape = (batch, 1, 1, 1)
    mean, std = rng.uniform(low, high, shape), rng.uniform(0.01, 1.0, shape) * contrast
    return np.clip(mean + std * rng.standard_normal((batch, SIZE, SIZE, 3)), low, high).astype(np.float32)


def _pixels(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """What models with built-in preprocessing take: pixels in 0..255."""
    return {"image": _photos(rng, batch, 0.0, 255.0, contrast=80.0)}


def _standardized(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """What ``preprocess_input`` hands ResNet50 / DenseNet121 (which carry no preprocessing)."""
    return {"image": _photos(rng, batch, -2.5, 2.5, contrast=1.5)}


def _backbone(factory: Callable[..., Any], pooling: str | None, make_feeds: Callable[..., Any]) -> Any:
    keras.utils.set_random_seed(0)
    model = factory(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), pooling=pooling)
    keras_batchnorm_statistics(model, make_feeds(np.random.default_rng(1), 16)["image"])
    return model


def _run_case(
    factory: Callable[..., Any],
    *,
    pooling: str | None,
    make_feeds: Callable[[np.random.Generator, int], dict[str, np.ndarray]],
) -> None:
    """Keras backbone (default validation) -> torch head; the merged model vs the native chain."""
    backbone = _backbone(factory, pooling, make_feeds)
    feeds = feeds_at(make_feeds, BATCHES)
    features = keras_call(backbone, feeds[-1]["image"])
    assert_order_one(backbone.name, features)

    converted = ox.from_keras(backbone)  # default validation on
    input_layers = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.InputLayer)]
    assert [v.name for v in converted.graph.input] == input_layers  # no captured constants as inputs

    torch.manual_seed(0)
    channels = features.shape[-1]
    head = (MlpHead(channels) if pooling else ConvHead(channels)).eval()
    example = torch.randn(1, channels) if pooling else torch.randn(1, channels, 2, 2)
    head_onnx = ox.from_torch(head, (example,), output_names=["logits"])

    merged = ox.chain({"backbone": converted, "head": head_onnx})
    assert [v.name for v in merged.graph.input] == [converted.graph.input[0].name]
    assert dims(merged.graph.input[0])[0] == dims(merged.graph.output[0])[0] == "batch"
    # a feature map crosses the seam NHWC -> NCHW: exactly one Transpose, inserted from the layouts
    assert inserted_adapters(merged) == ([] if pooling else [("Transpose", [0, 3, 1, 2])])

    def reference(image: np.ndarray) -> np.ndarray:
        out = keras_call(backbone, image)
        return torch_call(head, out if pooling else out.transpose(0, 3, 1, 2))  # the user's own permute

    check(merged, reference, [{merged.graph.input[0].name: f["image"]} for f in feeds])


def test_efficientnetb0_with_preprocessing_into_torch_head() -> None:
    _run_case(keras.applications.EfficientNetB0, pooling="avg", make_feeds=_pixels)


def test_efficientnetv2b0_with_preprocessing_into_torch_head() -> None:
    _run_case(keras.applications.EfficientNetV2B0, pooling="avg", make_feeds=_pixels)


def test_mobilenetv3small_with_preprocessing_into_torch_head() -> None:
    _run_case(keras.applications.MobileNetV3Small, pooling="avg", make_feeds=_pixels)


@pytest.mark.heavy
def test_convnexttiny_into_torch_conv_head() -> None:
    _run_case(keras.applications.ConvNeXtTiny, pooling=None, make_feeds=_pixels)


@pytest.mark.heavy
def test_resnet50_into_torch_conv_head() -> None:
    _run_case(keras.applications.ResNet50, pooling=None, make_feeds=_standardized)


@pytest.mark.heavy
def test_densenet121_into_torch_conv_head() -> None:
    _run_case(keras.applications.DenseNet121, pooling=None, make_feeds=_standardized)


# ----------------------------------------------------------------------------------- transformer
D_MODEL, VOCAB = 32, 100


def _keras_transformer_block() -> Any:
    """A post-norm encoder block, its feed-forward with Keras's default (exact) ``gelu``."""
    layers = keras.layers
    tokens = keras.Input((None, D_MODEL), name="tokens")
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=D_MODEL // 2)(tokens, tokens)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([tokens, attended]))
    ff = layers.Dense(4 * D_MODEL, activation="gelu")(x)
    ff = layers.Dense(D_MODEL)(ff)
    out = layers.LayerNormalization(epsilon=1e-6, name="encoded")(layers.Add()([x, ff]))
    return keras.Model(tokens, out, name="encoder_block")


class Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D_MODEL)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class PoolHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(D_MODEL, 3)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.fc(encoded.mean(dim=1))


def _ids(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64)}


@pytest.fixture(scope="module")
def transformer_parts() -> dict[str, Any]:
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    return {"embed": Embed().eval(), "block": _keras_transformer_block(), "head": PoolHead().eval()}


def test_keras_transformer_block_with_gelu_between_torch_parts(transformer_parts: dict[str, Any]) -> None:
    embed, block, head = transformer_parts["embed"], transformer_parts["block"], transformer_parts["head"]
    seq_dims = {0: "batch", 1: "seq"}
    parts = {
        "embed": ox.from_torch(embed, (torch.randint(0, VOCAB, (2, 6)),), dynamic_dims={"ids": seq_dims}),
        "block": ox.from_keras(block),  # default validation on
        "head": ox.from_torch(head, (torch.randn(2, 6, D_MODEL),), dynamic_dims={"encoded": seq_dims}),
    }
    merged = ox.chain(parts)
    assert dims(merged.graph.input[0]) == ["batch", "seq"]
    assert dims(merged.graph.output[0])[0] == "batch"

    def reference(ids: np.ndarray) -> np.ndarray:
        return torch_call(head, keras_call(block, torch_call(embed, ids)))

    feeds = [_ids(np.random.default_rng(7), 1, 5), _ids(np.random.default_rng(8), 3, 12)]
    assert_order_one("encoder block", keras_call(block, torch_call(embed, feeds[1]["ids"])))
    check(merged, reference, feeds)
