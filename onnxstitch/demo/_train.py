"""Training the demo's two parts, each in its own framework (Keras and PyTorch).

Nothing here knows about ONNX: this is the user's side of the story — a model trained in Keras, a
model trained in PyTorch, and the "native chain" that runs one after the other in Python. torch,
tensorflow and keras are imported lazily, inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxstitch.converters._triton_guard import no_triton_beside_tensorflow
from onnxstitch.demo._data import Digits
from onnxstitch.errors import MissingDependencyError

__all__ = [
    "FirstPart",
    "NativeParts",
    "setup_frameworks",
    "train_first",
    "train_second",
]

logger = logging.getLogger(__name__)

#: ``on_epoch(epoch, total, metrics)`` is called after each training epoch.
EpochCallback = Callable[[int, int, dict[str, float]], None]

_BATCH = 32


@dataclass
class NativeParts:
    """The two trained parts in their own frameworks, and how to run them one after the other.

    Attributes:
        first: the first part (a ``keras.Model`` or a ``torch.nn.Module``).
        second: the second part (the other framework).
        first_framework: ``"keras"`` or ``"torch"``.
        second_framework: the other one.
        input_layout: layout of the chain's image input, ``"NHWC"`` (Keras first) or ``"NCHW"``.
        feature_shape: shape of one feature tensor at the seam, without the batch dim.
        predict: the native chain: images (in ``input_layout``) → logits, as numpy.
        run_first: the first part alone: images → features, as numpy in the second part's layout.
        run_second: the second part alone: features → logits, as numpy.
        first_accuracy: test accuracy of the first part with its temporary classifier.
    """

    first: Any
    second: Any
    first_framework: str
    second_framework: str
    input_layout: str
    feature_shape: tuple[int, ...]
    run_first: Callable[[np.ndarray], np.ndarray]
    run_second: Callable[[np.ndarray], np.ndarray]
    first_accuracy: float

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The native chain: images (in ``input_layout``) → logits, as numpy."""
        return self.run_second(self.run_first(images))


def _import_frameworks() -> tuple[Any, Any, Any]:
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", extra="keras", purpose="the demo's Keras part") from exc
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", extra="torch", purpose="the demo's PyTorch part") from exc
    return keras, tf, torch


def setup_frameworks(*, seed: int, threads: int) -> None:
    """Seed Python, numpy, TensorFlow/Keras and torch, and set both frameworks' thread counts.

    TensorFlow's thread pools can only be sized before its runtime starts; if it already has (a
    second demo in the same process), the existing pools are kept.

    Raises:
        MissingDependencyError: torch or tensorflow is not installed.
    """
    keras, tf, torch = _import_frameworks()
    keras.utils.set_random_seed(seed)  # python `random`, numpy and the TF backend
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; keeping its thread pools")


class _KerasEpochs:
    """Builds a Keras callback that forwards each finished epoch to ``on_epoch``."""

    @staticmethod
    def make(keras: Any, total: int, on_epoch: EpochCallback | None) -> list[Any]:
        if on_epoch is None:
            return []
        report: EpochCallback = on_epoch

        class _Cb(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                report(epoch + 1, total, {k: float(v) for k, v in (logs or {}).items()})

        return [_Cb()]


def _keras_fit(keras: Any, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, on_epoch: Any) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=_BATCH,
        shuffle=True,
        verbose=0,
        callbacks=_KerasEpochs.make(keras, epochs, on_epoch),
    )


def _torch_fit(
    torch: Any, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, on_epoch: EpochCallback | None
) -> None:
    with no_triton_beside_tensorflow():  # torch.optim imports torch._dynamo, which probes for triton
        _torch_epochs(torch, model, x, y, epochs, on_epoch)


def _torch_epochs(
    torch: Any, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, on_epoch: EpochCallback | None
) -> None:
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(int(torch.initial_seed()) % (2**31))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(xt), _BATCH):
            idx = order[start : start + _BATCH]
            optimizer.zero_grad()
            logits = model(xt[idx])
            loss = loss_fn(logits, yt[idx])
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, {"loss": total_loss / len(xt), "accuracy": correct / len(xt)})
    model.eval()


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


@dataclass
class FirstPart:
    """The first part after its training: the model, its framework and its test accuracy."""

    model: Any
    framework: str
    accuracy: float


def train_first(
    flavour: str, data: Digits, *, epochs: int, on_epoch: EpochCallback | None = None
) -> FirstPart:
    """Train the first part: the Keras backbone (``keras-torch``) or the torch trunk (``torch-keras``).

    Raises:
        MissingDependencyError: torch or tensorflow is not installed.
    """
    keras, _, torch = _import_frameworks()
    if flavour == "keras-torch":
        return _keras_backbone(keras, data, epochs, on_epoch)
    return _torch_trunk_trained(torch, data, epochs, on_epoch)


def train_second(
    first: FirstPart, data: Digits, *, epochs: int, on_epoch: EpochCallback | None = None
) -> NativeParts:
    """Train the second part on the first part's features, in the other framework.

    Raises:
        MissingDependencyError: torch or tensorflow is not installed.
    """
    keras, _, torch = _import_frameworks()
    if first.framework == "keras":
        return _torch_head(torch, first, data, epochs, on_epoch)
    return _keras_head(keras, torch, first, data, epochs, on_epoch)


def _keras_backbone(keras: Any, data: Digits, epochs: int, on_epoch: EpochCallback | None) -> FirstPart:
    """A Keras CNN backbone (NHWC, 64-d features), trained with a temporary classifier on top."""
    layers = keras.layers
    image = keras.Input(shape=(8, 8, 1), name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(image)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    backbone = keras.Model(image, features, name="backbone")
    classifier = layers.Dense(data.num_classes, name="temporary_classifier")(features)
    trainer = keras.Model(image, classifier, name="backbone_trainer")
    _keras_fit(keras, trainer, data.x_train, data.y_train, epochs, on_epoch)
    return FirstPart(backbone, "keras", _accuracy(trainer.predict_on_batch(data.x_test), data.y_test))


def _torch_head(
    torch: Any, first: FirstPart, data: Digits, epochs: int, on_epoch: EpochCallback | None
) -> NativeParts:
    """A PyTorch MLP head trained on the Keras backbone's features."""
    backbone = first.model
    feat_train = np.asarray(backbone.predict_on_batch(data.x_train))
    head = torch.nn.Sequential(
        torch.nn.Linear(feat_train.shape[1], 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, data.num_classes),
    )
    _torch_fit(torch, head, feat_train, data.y_train, epochs, on_epoch)

    def run_first(images: np.ndarray) -> np.ndarray:
        return np.asarray(backbone.predict_on_batch(images))

    def run_second(feats: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(head(torch.from_numpy(feats)).numpy())

    return NativeParts(
        first=backbone,
        second=head,
        first_framework="keras",
        second_framework="torch",
        input_layout="NHWC",
        feature_shape=tuple(int(d) for d in feat_train.shape[1:]),
        run_first=run_first,
        run_second=run_second,
        first_accuracy=first.accuracy,
    )


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _torch_trunk(torch: Any) -> Any:
    nn = torch.nn

    class Trunk(nn.Module):  # type: ignore[misc, name-defined]
        """NCHW conv trunk: (n, 1, 8, 8) → (n, 32, 4, 4) feature map."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, image: Any) -> Any:
            x = torch.relu(self.conv1(image))
            x = self.pool(torch.relu(self.conv2(x)))
            return torch.relu(self.conv3(x))

    return Trunk()


def _torch_trunk_trained(torch: Any, data: Digits, epochs: int, on_epoch: EpochCallback | None) -> FirstPart:
    """A PyTorch conv trunk (NCHW feature map), trained with a temporary classifier on top."""
    nn = torch.nn
    trunk = _torch_trunk(torch)
    trainer = nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, data.num_classes))
    _torch_fit(torch, trainer, _nchw(data.x_train), data.y_train, epochs, on_epoch)
    with torch.inference_mode():
        accuracy = _accuracy(trainer(torch.from_numpy(_nchw(data.x_test))).numpy(), data.y_test)
    return FirstPart(trunk, "torch", accuracy)


def _keras_head(
    keras: Any, torch: Any, first: FirstPart, data: Digits, epochs: int, on_epoch: EpochCallback | None
) -> NativeParts:
    """A Keras conv head (NHWC) trained on the torch trunk's features, transposed NCHW → NHWC."""
    trunk = first.model

    def trunk_features(images_nchw: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(trunk(torch.from_numpy(images_nchw)).permute(0, 2, 3, 1).contiguous().numpy())

    feat_train = trunk_features(_nchw(data.x_train))
    layers = keras.layers
    features = keras.Input(shape=feat_train.shape[1:], name="features")
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(features)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    logits = layers.Dense(data.num_classes, name="logits")(x)
    head = keras.Model(features, logits, name="head")
    _keras_fit(keras, head, feat_train, data.y_train, epochs, on_epoch)

    def run_second(feats: np.ndarray) -> np.ndarray:
        return np.asarray(head.predict_on_batch(feats))

    return NativeParts(
        first=trunk,
        second=head,
        first_framework="torch",
        second_framework="keras",
        input_layout="NCHW",
        feature_shape=tuple(int(d) for d in feat_train.shape[1:]),
        run_first=trunk_features,
        run_second=run_second,
        first_accuracy=first.accuracy,
    )
