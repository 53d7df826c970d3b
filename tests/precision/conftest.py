"""A small real hybrid shared by the precision tests: a Keras CNN backbone and a torch MLP head,
converted with ``ox.from_keras``/``ox.from_torch`` and chained once per session."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _precision_models import RIDGE, Hybrid, images


@pytest.fixture(scope="session")
def hybrid() -> Hybrid:
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    import keras
    import torch
    from keras import layers

    import onnxstitch as ox

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    backbone = keras.Model(inputs, layers.Flatten(name="features")(x), name="backbone")

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    # "train" the last layer in closed form (least squares on one-hot targets), so that the logits
    # separate the classes as a trained model's do and top-1 is not decided by float noise
    x, y = images(512, 100, labels=True)
    with torch.no_grad():
        hidden = head[:2](torch.from_numpy(np.array(backbone(x, training=False)))).numpy()
        design = np.hstack([hidden, np.ones((len(hidden), 1), np.float32)])
        gram = design.T @ design + RIDGE * np.trace(design.T @ design) / len(design.T) * np.eye(len(design.T))
        solution = np.linalg.solve(gram, design.T @ (10.0 * np.eye(10)[y])).astype(np.float32)
        head[2].weight.copy_(torch.from_numpy(np.ascontiguousarray(solution[:-1].T)))
        head[2].bias.copy_(torch.from_numpy(solution[-1]))

    merged = ox.chain(
        {"backbone": ox.from_keras(backbone), "head": ox.from_torch(head, (torch.zeros(2, 128),))}
    )

    def reference(x: np.ndarray) -> np.ndarray:
        features = np.array(backbone(x, training=False))
        with torch.inference_mode():
            out: Any = head(torch.from_numpy(features))
        return np.asarray(out.numpy())

    return Hybrid(merged, merged.graph.input[0].name, reference)
