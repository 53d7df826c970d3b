"""from_keras on what real Keras models hold: captured preprocessing constants, exact gelu, grouped
convolutions, lookup tables; and the fix each unsupported op is offered.

Without TensorFlow, Keras or tf2onnx these tests skip, and fail in CI (``ONNXSTITCH_REQUIRE_FRAMEWORKS``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxstitch.converters import from_keras
from onnxstitch.converters._keras_sources import Traced
from onnxstitch.converters._tf2onnx import _check_inputs, _quiet_logs
from onnxstitch.errors import ConversionError, UnsupportedOpsError

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in inits]


def run_onnx(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ------------------------------------------------------------------ captured constants (item 2)
def normalized_cnn() -> Any:
    """EfficientNet's preprocessing in small: Rescaling, Normalization(mean, variance), a conv."""
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051])(h)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D(name="pool")(h), name="normalized")


def test_normalization_constants_are_frozen_not_inputs() -> None:
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Normalization(mean=[1.0, 2, 3, 4], variance=[1.0, 2, 3, 4])(x))
    converted = from_keras(model)  # validation on: used to fail blaming a "reference"
    assert graph_inputs(converted) == ["x"]
    feed = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = (feed - np.array([1, 2, 3, 4])) / np.sqrt([1, 2, 3, 4])
    np.testing.assert_allclose(run_onnx(converted, {"x": feed})[0], want, rtol=1e-5, atol=1e-6)


def test_preprocessing_model_has_exactly_the_keras_inputs() -> None:
    model = normalized_cnn()
    converted = from_keras(model)
    assert graph_inputs(converted) == ["image"]
    feed = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        run_onnx(converted, {"image": feed})[0], np.asarray(model(feed)), rtol=1e-4, atol=1e-5
    )


def test_tf_function_captures_become_constants() -> None:
    table = tf.constant([[2.0, -1.0], [0.5, 3.0]])

    @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32, name="v")])
    def project(v: Any) -> Any:
        return v @ table

    converted = from_keras(project)
    assert graph_inputs(converted) == ["v"]


def test_tf_function_captured_variable_becomes_a_constant() -> None:
    weights = tf.Variable([[1.0, -2.0], [0.5, 4.0]])

    @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32, name="v")])
    def mix(v: Any) -> Any:
        return tf.nn.relu(v @ weights)

    converted = from_keras(mix)
    assert graph_inputs(converted) == ["v"]


def test_extra_graph_inputs_are_a_clear_conversion_error() -> None:
    """The check itself: a graph with an input beyond the model's is refused, naming it."""
    x = onnx.helper.make_tensor_value_info("in_000", onnx.TensorProto.FLOAT, [None, 4])
    leaked = onnx.helper.make_tensor_value_info("norm/Sub/y:0", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("out_000", onnx.TensorProto.FLOAT, [None, 4])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Sub", ["in_000", "norm/Sub/y:0"], ["out_000"])], "g", [x, leaked], [y]
    )
    traced = Traced(None, [tf.TensorSpec((None, 4), tf.float32)], ["x"], ["y"], lambda *a: [], what="m")
    with pytest.raises(ConversionError) as info:
        _check_inputs(onnx.helper.make_model(graph), traced)
    text = str(info.value)
    assert "norm/Sub/y:0" in text and "['x']" in text and "frozen into constants" in text
    assert "reference" not in text


# ------------------------------------------------------------------------- common ops (item 3)
def transformer_block() -> Any:
    """A pre-norm transformer encoder block with Keras's default (exact) gelu feed-forward."""
    x = keras.Input((6, 16), name="tokens")
    h = keras.layers.LayerNormalization()(x)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    h = keras.layers.Add()([x, h])
    f = keras.layers.LayerNormalization()(h)
    f = keras.layers.Dense(32, activation="gelu")(f)
    f = keras.layers.Dense(16)(f)
    return keras.Model(x, keras.layers.Add(name="encoded")([h, f]), name="block")


def test_exact_gelu_transformer_block_converts_with_parity() -> None:
    model = transformer_block()
    converted = from_keras(model)  # validates at batch 1 and 7
    assert "Erf" in {n.op_type for n in converted.graph.node}
    feed = np.random.default_rng(2).standard_normal((4, 6, 16)).astype(np.float32) * 3
    np.testing.assert_allclose(
        run_onnx(converted, {"tokens": feed})[0], np.asarray(model(feed)), rtol=1e-4, atol=1e-5
    )


def test_erfc_itself_converts() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 5), tf.float32, name="x")])
    def tail(x: Any) -> Any:
        return tf.math.erfc(x)

    converted = from_keras(tail)
    feed = np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(run_onnx(converted, {"x": feed})[0], np.asarray(tail(feed)), atol=1e-6)


def test_grouped_conv2d_converts_with_parity() -> None:
    x = keras.Input((9, 9, 8), name="image")
    h = keras.layers.Conv2D(8, 3, groups=4, padding="same", name="grouped")(x)
    model = keras.Model(x, keras.layers.DepthwiseConv2D(3, name="dw")(h), name="convnext_like")
    converted = from_keras(model)
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    groups = sorted(a.i for n in convs for a in n.attribute if a.name == "group")
    assert groups == [4, 8]
    assert not {"StatefulPartitionedCall", "PartitionedCall"} & {n.op_type for n in converted.graph.node}
    feed = np.random.default_rng(3).standard_normal((2, 9, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(
        run_onnx(converted, {"image": feed})[0], np.asarray(model(feed)), rtol=1e-4, atol=1e-5
    )


def test_string_lookup_becomes_category_mapper() -> None:
    x = keras.Input((3,), dtype="string", name="words")
    model = keras.Model(x, keras.layers.StringLookup(vocabulary=["cat", "dog", "fish"])(x), name="vocab")
    # string inputs cannot be drawn at random: the error says to give real words, and they validate
    with pytest.raises(ConversionError, match="'words'") as info:
        from_keras(model)
    assert "validation_inputs=" in (info.value.hint or "")
    words = np.array([["dog", "cat", "emu"], ["fish", "fish", "dog"]], dtype=object)
    converted = from_keras(model, validation_inputs={"words": words})
    assert "CategoryMapper" in {n.op_type for n in converted.graph.node}
    got = run_onnx(converted, {"words": words})[0]
    np.testing.assert_array_equal(got, np.asarray(model(words)))
    assert got.tolist() == [[2, 1, 0], [3, 3, 2]]


def test_integer_lookup_is_refused_with_a_lookup_hint() -> None:
    x = keras.Input((4,), dtype="int64", name="ids")
    model = keras.Model(x, keras.layers.IntegerLookup(vocabulary=[7, 11, 13])(x), name="ids")
    with pytest.raises(UnsupportedOpsError) as info:  # tf2onnx maps string keys only
        from_keras(model, validate=False)
    assert "LookupTableFindV2" in info.value.ops
    assert "lookup" in (info.value.hint or "") and "opset=" not in (info.value.hint or "")


def test_user_op_handler_route() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def special(x: Any) -> Any:
        return tf.math.lgamma(tf.abs(x) + 1.0)

    with pytest.raises(UnsupportedOpsError) as info:
        from_keras(special)
    hint = info.value.hint or ""
    assert "Lgamma" in hint and "op_handlers" in hint and "preprocessing" not in hint

    def lgamma_stirling(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
        node.type = "Identity"  # a deliberately wrong stand-in: the handler really is used ...

    with pytest.raises(Exception) as wrong:  # ... and validation catches the wrong numbers
        from_keras(special, op_handlers={"Lgamma": lgamma_stirling})
    assert type(wrong.value).__name__ == "ValidationError"


def test_unsupported_math_op_hint_proposes_opset_and_handler() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def special(x: Any) -> Any:
        return tf.math.bessel_i0e(x)

    with pytest.raises(UnsupportedOpsError) as info:
        from_keras(special, opset=13, validate=False)
    hint = info.value.hint or ""
    assert "BesselI0e" in hint and "opset=18" in hint and "op_handlers" in hint
    assert "file" not in hint and "preprocessing" not in hint


def test_unsupported_string_op_hint_proposes_preprocessing() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name="text")])
    def lengths(text: Any) -> Any:
        return tf.strings.to_number(tf.strings.substr(text, 0, 2))

    with pytest.raises(UnsupportedOpsError) as info:
        from_keras(lengths, validate=False)
    hint = info.value.hint or ""
    assert "preprocessing" in hint and "opset=" not in hint


# -------------------------------------------------------------------------- quiet (item 9)
def test_mobilenet_v3_conversion_is_quiet_and_leaves_loggers_alone(caplog: pytest.LogCaptureFixture) -> None:
    """tf2onnx logs two whole ``optimize_transpose`` tracebacks on this successful conversion."""
    names = ("tf2onnx", "tf2onnx.optimizer", "tensorflow")
    before = {n: (list(logging.getLogger(n).filters), logging.getLogger(n).level) for n in names}
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg"
    )
    with caplog.at_level(logging.DEBUG):
        from_keras(model, validate=False)  # random-init MobileNetV3 outputs ~1e-10: nothing to compare
    loud = [
        r
        for r in caplog.records
        if r.name.startswith(("tf2onnx", "tensorflow")) and r.levelno >= logging.INFO
    ]
    assert loud == []
    kept = [r.getMessage() for r in caplog.records if r.name == "onnxstitch.converters._tf2onnx"]
    assert any("Failed to apply optimize_transpose" in m for m in kept)  # still there, at debug level
    assert {n: (list(logging.getLogger(n).filters), logging.getLogger(n).level) for n in names} == before


def test_log_quieting_is_scoped_to_the_converting_thread(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    tf2onnx_log = logging.getLogger("tf2onnx.tfonnx")
    with caplog.at_level(logging.DEBUG), _quiet_logs():
        tf2onnx_log.warning("from the converting thread")
        other = threading.Thread(target=tf2onnx_log.warning, args=("from another thread",))
        other.start()
        other.join()
    tf2onnx_log.warning("after the conversion")
    seen = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("tf2onnx.tfonnx", logging.WARNING, "from another thread") in seen
    assert ("tf2onnx.tfonnx", logging.WARNING, "after the conversion") in seen
    assert ("tf2onnx.tfonnx", logging.WARNING, "from the converting thread") not in seen
    assert (
        "onnxstitch.converters._tf2onnx",
        logging.DEBUG,
        "tf2onnx.tfonnx: from the converting thread",
    ) in seen
