"""ox.quantize rewrites Keras' GlobalAveragePooling2D (Transpose → ReduceMean) to pool in int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _precision_models import images

import onnxstitch as ox
from onnxstitch.precision import read_precision
from onnxstitch.precision._parts import named_copy, node_parts
from onnxstitch.precision._rewrite import global_pools


@pytest.fixture(scope="module")
def pooled() -> onnx.ModelProto:
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return ox.from_keras(keras.Model(inputs, outputs))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def test_the_rewrite_computes_the_same_in_float32(pooled: onnx.ModelProto) -> None:
    assert "ReduceMean" in _ops(pooled) and "Transpose" in _ops(pooled)  # how Keras' GAP arrives
    work = named_copy(pooled)
    rewritten, names = global_pools(work, {"model"}, node_parts(work))
    assert len(names) == 1 and "ReduceMean" not in _ops(rewritten)
    assert [o for o in _ops(rewritten) if o in ("GlobalAveragePool", "Flatten")] == [
        "GlobalAveragePool",
        "Flatten",
    ]
    onnx.checker.check_model(rewritten, full_check=True)
    x = images(16, 0)
    np.testing.assert_allclose(_run(rewritten, x), _run(pooled, x), rtol=1e-5, atol=1e-5)
    # a part not quantized static int8 is left as it is
    assert global_pools(work, {"other"}, node_parts(work)) == (work, [])


def test_quantize_pools_in_int8_and_global_pool_false_keeps_reducemean(
    pooled: onnx.ModelProto, tmp_path: Path
) -> None:
    calibration = {"image": images(128, 1)}
    q = ox.quantize(pooled, calibration, min_agreement=0.0)
    settings = read_precision(q)["settings"]  # type: ignore[index]
    assert len(settings["global_pool"]) == 1 and "ReduceMean" not in _ops(q)
    onnx.checker.check_model(q, full_check=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(q.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert "QLinearGlobalAveragePool" in _ops(onnx.load(str(tmp_path / "optimized.onnx")))

    kept = ox.quantize(pooled, calibration, min_agreement=0.0, global_pool=False)
    assert read_precision(kept)["settings"]["global_pool"] == [] and "ReduceMean" in _ops(kept)  # type: ignore[index]
    x = images(64, 2)
    assert (_run(q, x).argmax(1) == _run(pooled, x).argmax(1)).mean() >= 0.9
