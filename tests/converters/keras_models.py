"""Tiny Keras / TensorFlow models shared by the Keras converter tests (and anyone who needs one).

Every builder seeds Keras so the weights are the same in every run. TensorFlow/Keras are imported
inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any


def _keras() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras


def functional_cnn() -> Any:
    """NHWC image (8x8x3) -> Conv2D -> BatchNorm -> ReLU -> GAP -> Dense ``logits`` (5)."""
    keras = _keras()
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    return keras.Model(image, logits, name="cnn")


def feature_map_model() -> Any:
    """NHWC image -> Conv2D: a rank-4 output ``features`` (for layouts on outputs)."""
    keras = _keras()
    image = keras.Input((6, 6, 2), name="pixels")
    features = keras.layers.Conv2D(3, 3, padding="same", name="features")(image)
    return keras.Model(image, features, name="fmap")


def channels_first_model() -> Any:
    """An NCHW input (3x5x5) pooled with ``data_format="channels_first"``, then Dense ``out``."""
    keras = _keras()
    x = keras.Input((3, 5, 5), name="chw")
    y = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap")(x)
    out = keras.layers.Dense(2, name="out")(y)
    return keras.Model(x, out, name="cf")


def mixed_formats_model() -> Any:
    """A channels_last Conv2D followed by a channels_first pooling: the image layout is ambiguous."""
    keras = _keras()
    x = keras.Input((4, 4, 3), name="img")
    y = keras.layers.Conv2D(2, 1, name="conv")(x)
    y = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap")(y)
    return keras.Model(x, keras.layers.Dense(2, name="out")(y), name="mixed")


def sequential_built(*, build: bool = True) -> Any:
    """A Sequential MLP (6 -> 8 -> dropout -> 3) that was built with ``build((None, 6))`` but never called."""
    keras = _keras()
    model = keras.Sequential(
        [
            keras.layers.Dense(8, activation="tanh", name="hidden"),
            keras.layers.Dropout(0.5, name="dropout"),  # must be off in the conversion
            keras.layers.Dense(3, name="scores"),
        ],
        name="seq",
    )
    if build:
        model.build((None, 6))
    return model


def sequential_embedding() -> Any:
    """A Sequential with an int32 ``tokens`` input (5 positions) -> Embedding -> mean -> Dense."""
    keras = _keras()
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32", name="tokens"),
            keras.layers.Embedding(10, 4, name="embed"),
            keras.layers.GlobalAveragePooling1D(name="pool"),
            keras.layers.Dense(2, name="class_scores"),
        ],
        name="seq_embed",
    )


def subclassed() -> Any:
    """A subclassed model (4 -> 6 -> 2), called once on a batch of 2 so its weights exist."""
    import numpy as np

    keras = _keras()

    class TwoLayer(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="two_layer")
            self.hidden = keras.layers.Dense(6, activation="relu")
            self.head = keras.layers.Dense(2)

        def call(self, features: Any) -> Any:
            return self.head(self.hidden(features))

    model = TwoLayer()
    model(np.zeros((2, 4), dtype="float32"))
    return model


def multi_io() -> Any:
    """Two inputs ``left`` (4) and ``right`` (3); two outputs ``joint`` (2) and ``aux`` (1)."""
    keras = _keras()
    left = keras.Input((4,), name="left")
    right = keras.Input((3,), name="right")
    joined = keras.layers.Concatenate(name="concat")([left, right])
    joint = keras.layers.Dense(2, name="joint")(joined)
    aux = keras.layers.Dense(1, activation="sigmoid", name="aux")(left)
    return keras.Model([left, right], [joint, aux], name="multi")


def dict_io() -> Any:
    """Dict inputs ``b``/``a`` and dict outputs ``total``/``first`` (keys differ from layer names)."""
    keras = _keras()
    a = keras.Input((4,), name="a")
    b = keras.Input((2,), name="b")
    total = keras.layers.Dense(2, name="dense_total")(keras.layers.Concatenate()([a, b]))
    first = keras.layers.Dense(1, name="dense_first")(a)
    return keras.Model({"b": b, "a": a}, {"total": total, "first": first}, name="dict_io")


def sequence_model() -> Any:
    """``tokens`` of shape (batch, seq, 8) with a dynamic seq axis -> Dense(4) per step ``per_step``."""
    keras = _keras()
    x = keras.Input((None, 8), name="tokens")
    return keras.Model(x, keras.layers.Dense(4, name="per_step")(x), name="seqlen")


MARKER_ENV = "ONNXSTITCH_TEST_LAMBDA_MARKER"


def lambda_model() -> Any:
    """A model with a Lambda layer whose code writes the file named by ``$MARKER_ENV`` whenever it
    runs (also while the model is built). Set the variable before building and loading."""
    keras = _keras()
    x = keras.Input((4,), name="x")
    evil = keras.layers.Lambda(
        lambda t: (
            __import__("pathlib")
            .Path(__import__("os").environ["ONNXSTITCH_TEST_LAMBDA_MARKER"])
            .write_text("ran"),
            t,
        )[1],
        name="evil",
    )
    return keras.Model(x, keras.layers.Dense(2, name="y")(evil(x)), name="with_lambda")


def file_writing_saved_model(folder: Any) -> tuple[Any, Any]:
    """A SavedModel in ``folder/saved`` whose serving function writes ``folder/written.txt`` when run.

    Returns ``(saved_model_dir, marker_path)``; saving only traces, so the marker does not exist yet.
    """
    import tensorflow as tf

    marker = folder / "written.txt"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            tf.io.write_file(str(marker), "ran")
            return {"y": x * 2.0}

    module = Writer()
    tf.saved_model.save(module, str(folder / "saved"), signatures={"serving_default": module.serve})
    return folder / "saved", marker
