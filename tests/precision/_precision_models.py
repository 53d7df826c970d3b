"""The precision tests' data and model: 8x8 images of 10 classes, and the hybrid (a Keras CNN
backbone chained into a torch MLP head) that ``conftest.py`` builds once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx


@dataclass(frozen=True)
class Hybrid:
    """The merged model, its input name, and the native chain (Keras, then torch) as a reference."""

    model: onnx.ModelProto
    input: str
    reference: Callable[[np.ndarray], np.ndarray]


_CENTERS = [
    (1.5, 1.5),
    (1.5, 3.5),
    (1.5, 5.5),
    (3.5, 1.5),
    (3.5, 3.5),
    (3.5, 5.5),
    (5.5, 1.5),
    (5.5, 3.5),
    (5.5, 5.5),
    (3.5, 3.5),
]
RIDGE = 1e-3
_WIDTHS = [3.0] * 9 + [12.0]  # class 9: one wide blob in the middle


def images(n: int, seed: int, *, labels: bool = False) -> Any:
    """``n`` 8x8x1 images in [0, 1] (NHWC) of 10 classes: a blob at a class's place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    yy, xx = np.mgrid[0:8, 0:8]
    centers = np.array(_CENTERS)[y][:, :, None, None] + rng.normal(0, 0.4, size=(n, 2, 1, 1))
    width = np.array(_WIDTHS)[y][:, None, None]
    blobs = np.exp(-((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) / width)
    x = np.clip(blobs + 0.1 * rng.standard_normal((n, 8, 8)), 0, 1).astype(np.float32)[..., None]
    return (x, y) if labels else x
