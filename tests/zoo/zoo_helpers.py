"""Helpers of the real-architecture suite: trained-like statistics, native chains, the final check.

Every case of ``tests/zoo`` converts a real architecture with the converters' default validation,
merges it with a small part of the *other* framework, and checks the merged model against the
native chain (the frameworks' own forward passes, with the user's own permutes) with
``ox.verify`` at its default tolerances, on realistic feeds at two batch sizes (and two sequence
lengths for text models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx

import onnxstitch as ox
from onnxstitch import _meta

# the heaviest cases (`@pytest.mark.heavy`, up to a minute each on 2 cores) run only where this is
# "1" (tests/zoo/conftest.py skips them otherwise); CI sets it in a step of its own (.ci/run)
HEAVY_ENV = "ONNXSTITCH_ZOO_HEAVY"

Feeds = dict[str, np.ndarray]


def feeds_at(make: Callable[[np.random.Generator, int], Feeds], batches: Sequence[int]) -> list[Feeds]:
    """One feed dict per batch size, from a seeded generator."""
    return [make(np.random.default_rng(100 + i), b) for i, b in enumerate(batches)]


def check(merged: onnx.ModelProto, reference: Callable[..., Any], feeds: list[Feeds]) -> None:
    """The merged model is valid and matches ``reference`` at ox.verify's default tolerances."""
    onnx.checker.check_model(merged, full_check=True)
    report = ox.verify(merged, reference, feeds)
    assert len(report.rows) >= len(feeds), f"verify compared nothing:\n{report}"
    report.raise_for_mismatch()


def assert_order_one(name: str, values: np.ndarray) -> None:
    """Outputs of a random-init network must be of order 1, or parity would pass vacuously."""
    scale = float(np.abs(values).max())
    spread = float(values.std())
    assert scale > 0.1 and spread > 1e-2, f"{name}: outputs too small to judge a conversion (max {scale:.3g})"


def inserted_adapters(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    """(op, ints) of every node the merge inserted at a seam."""
    return [
        (n.op_type, [int(v) for a in n.attribute for v in a.ints])
        for n in model.graph.node
        if (_meta.get_part(n) or "").endswith(".adapter")
    ]


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


# ------------------------------------------------------------------------------------ keras
def _keras_layers(layer: Any) -> Iterator[Any]:
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _keras_layers(child)


def keras_batchnorm_statistics(model: Any, images: np.ndarray) -> int:
    """Give every BatchNormalization of ``model`` the statistics of one training-mode pass.

    With momentum 0 for that one pass, the moving mean/variance become the batch statistics each
    layer saw, as after training: outputs are of order 1 (random-init statistics, mean 0 and
    variance 1, blow up or vanish through deep nets). Returns how many layers were set.
    """
    import keras

    layers = [layer for layer in _keras_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def keras_call(model: Any, *arrays: np.ndarray) -> np.ndarray:
    """The Keras model's inference output as a writable numpy array."""
    return np.array(model(arrays[0] if len(arrays) == 1 else list(arrays), training=False))


# ------------------------------------------------------------------------------------ torch
def torch_batchnorm_statistics(module: Any, *example: Any) -> int:
    """Set every BatchNorm's running statistics from one training-mode pass (cumulative average).

    Returns how many BatchNorm layers were set; the module is left in eval mode.
    """
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: after one batch, exactly that batch's statistics
    module.train()
    with torch.no_grad():
        module(*example)
    module.eval()
    return len(norms)


def torch_call(module: Any, *arrays: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return out.numpy()
