"""The demo's data: scikit-learn's handwritten digits, which ship inside the package (no network)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxstitch.errors import MissingDependencyError

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "Digits", "load_digits_split"]

#: The train/test split is fixed (independent of ``--seed``) so every run is scored on the same images.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    """Train and test images as NHWC float32 in [0, 1] (``(n, 8, 8, 1)``) with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        """Number of classes (10 digits)."""
        return 10


def load_digits_split() -> Digits:
    """Load the 1,797 8×8 digit images and split them 80/20, stratified, with a fixed seed.

    Raises:
        MissingDependencyError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", extra="demo", purpose="the demo's data set") from exc
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return Digits(
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
    )
