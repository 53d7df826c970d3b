"""from_keras with real TensorFlow, Keras, tf2onnx and onnxruntime (no mocks).

Every tiny model is built and converted once per module; each test checks one property of the
result. Parity is checked twice: inside from_keras (validate=True, the default) and here again,
independently, with onnxruntime against the native model at batch 1 and 7.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxstitch import _meta
from onnxstitch.converters import from_keras
from onnxstitch.errors import (
    ConversionError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    UnsafeModelError,
    UnsupportedOpsError,
    ValidationError,
    VersionError,
)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

RTOL, ATOL = 1e-4, 1e-5


# ------------------------------------------------------------------------------------- helpers
def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.input], [v.name for v in model.graph.output]


def random_feed(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.input:
        shape = [
            batch if i == 0 else (d if isinstance(d, int) and d > 0 else 3) for i, d in enumerate(dims(v))
        ]
        if v.type.tensor_type.elem_type == onnx.TensorProto.INT32:
            feeds[v.name] = rng.integers(0, 10, size=shape).astype(np.int32)
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_parity(model: onnx.ModelProto, native: Callable[..., Any]) -> None:
    """ORT vs ``native(*arrays)`` (list of outputs in graph-output order) at batch 1 and 7."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seed in ((1, 11), (7, 12)):
        feeds = random_feed(model, batch, seed)
        got = sess.run(None, feeds)
        want = native(*[feeds[v.name] for v in model.graph.input])
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def keras_native(model: Any) -> Callable[..., list[np.ndarray]]:
    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        out = model(list(arrays) if len(arrays) > 1 else arrays[0], training=False)
        outs = out if isinstance(out, list | tuple) else [out]
        return [np.asarray(o) for o in outs]

    return run


def assert_clean(model: onnx.ModelProto) -> None:
    """Full checker, no TF port suffixes / Identity names, one shared batch symbol."""
    onnx.checker.check_model(model, full_check=True)
    ins, outs = io_names(model)
    for name in ins + outs:
        assert ":" not in name and not name.startswith("Identity"), name
    for v in [*model.graph.input, *model.graph.output]:
        d = dims(v)
        assert d[0] == "batch", (v.name, d)
        assert not any(isinstance(x, str) and x.startswith("unk__") for x in d), (v.name, d)
    assert _meta.get_source(model) == "keras"


def snapshot(model: Any) -> dict[str, Any]:
    return {
        "name": model.name,
        "layers": [(layer.name, layer.trainable) for layer in model.layers],
        "trainable": model.trainable,
        "output_names": list(getattr(model, "output_names", []) or []),
        "outputs": [t.name for t in getattr(model, "outputs", []) or []],
        "weights": [w.name for w in model.weights],
        "values": [np.array(w) for w in model.get_weights()],
    }


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cnn() -> Any:
    return keras_models.functional_cnn()


@pytest.fixture(scope="module")
def cnn_onnx(cnn: Any) -> onnx.ModelProto:
    return from_keras(cnn)


@pytest.fixture(scope="module")
def multi() -> Any:
    return keras_models.multi_io()


@pytest.fixture(scope="module")
def multi_onnx(multi: Any) -> onnx.ModelProto:
    return from_keras(multi)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, cnn: Any) -> Path:
    folder = tmp_path_factory.mktemp("keras_files")
    cnn.save(folder / "cnn.keras")
    cnn.save(folder / "cnn.h5")
    cnn.export(str(folder / "saved"), verbose=False)
    return folder


# ------------------------------------------------------------------------------ Keras models
def test_functional_names_dims_parity(cnn: Any, cnn_onnx: onnx.ModelProto) -> None:
    assert_clean(cnn_onnx)
    assert io_names(cnn_onnx) == (["image"], ["logits"])
    assert dims(cnn_onnx.graph.input[0]) == ["batch", 8, 8, 3]
    assert dims(cnn_onnx.graph.output[0]) == ["batch", 5]
    assert_parity(cnn_onnx, keras_native(cnn))


def test_functional_default_opset_is_18_and_self_contained(cnn_onnx: onnx.ModelProto) -> None:
    assert {o.domain: o.version for o in cnn_onnx.opset_import}[""] == 18
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in cnn_onnx.graph.initializer)


def test_image_input_recorded_nhwc(cnn_onnx: onnx.ModelProto) -> None:
    assert _meta.get_layouts(cnn_onnx) == {"image": "NHWC"}


def test_rank4_output_recorded_nhwc() -> None:
    model = keras_models.feature_map_model()
    converted = from_keras(model)
    assert _meta.get_layouts(converted) == {"pixels": "NHWC", "features": "NHWC"}
    assert_parity(converted, keras_native(model))


def test_channels_first_recorded_nchw() -> None:
    model = keras_models.channels_first_model()
    converted = from_keras(model)
    assert _meta.get_layouts(converted) == {"chw": "NCHW"}
    assert_parity(converted, keras_native(model))


def test_mixed_data_formats_record_only_the_evidence() -> None:
    """The image is read by a channels_last conv (NHWC); the output is a Dense's (nothing)."""
    converted = from_keras(keras_models.mixed_formats_model())
    assert _meta.get_layouts(converted) == {"img": "NHWC"}


def test_layout_override(cnn: Any) -> None:
    converted = from_keras(cnn, layouts={"image": "NCHW"}, validate=False)
    assert _meta.get_layouts(converted) == {"image": "NCHW"}
    with pytest.raises(ConversionError, match="logits"):
        from_keras(cnn, layouts={"logits": "NHWC"}, validate=False)  # rank 2: no layout


def test_callers_model_unchanged(tmp_path: Path) -> None:
    model = keras_models.multi_io()
    model.layers[-1].trainable = False
    before = snapshot(model)
    from_keras(model)
    after = snapshot(model)
    for key in ("name", "layers", "trainable", "output_names", "outputs", "weights"):
        assert after[key] == before[key], key
    for a, b in zip(after["values"], before["values"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_sequential_built_never_called_with_signature() -> None:
    model = keras_models.sequential_built()
    spec = tf.TensorSpec((None, 6), tf.float32, name="features")
    converted = from_keras(model, input_signature=[spec])
    assert_clean(converted)
    assert io_names(converted) == (["features"], ["scores"])
    assert_parity(converted, keras_native(model))


def test_sequential_signature_derived_from_build() -> None:
    model = keras_models.sequential_built()
    converted = from_keras(model)
    assert_clean(converted)
    ins, outs = io_names(converted)
    assert outs == ["scores"] and not ins[0].startswith("keras_tensor")
    assert dims(converted.graph.input[0]) == ["batch", 6]


def test_sequential_signature_as_shape_dtype_pair() -> None:
    model = keras_models.sequential_built()
    converted = from_keras(model, input_signature={"rows": ((None, 6), "float32")})
    assert io_names(converted)[0] == ["rows"]
    for dtype in (np.float32, tf.float32, "f4"):
        again = from_keras(model, input_signature=[((None, 6), dtype)], validate=False)
        assert again.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    with pytest.raises(InputError, match="shape, dtype"):
        from_keras(model, input_signature=[((None, 6), "no-such-dtype")])
    with pytest.raises(InputError, match="input_signature"):
        from_keras(model, input_signature=42)


def test_unbuilt_model_refused() -> None:
    with pytest.raises(ConversionError, match="not been built"):
        from_keras(keras_models.sequential_built(build=False))


def test_sequential_int_input() -> None:
    model = keras_models.sequential_embedding()
    converted = from_keras(model)
    assert_clean(converted)
    assert io_names(converted) == (["tokens"], ["class_scores"])
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert_parity(converted, keras_native(model))


def test_subclassed_with_signature() -> None:
    model = keras_models.subclassed()
    converted = from_keras(model, input_signature=[tf.TensorSpec((None, 4), tf.float32, name="feats")])
    assert_clean(converted)
    assert io_names(converted) == (["feats"], ["output"])
    assert_parity(converted, keras_native(model))


def test_subclassed_signature_from_build_config() -> None:
    model = keras_models.subclassed()
    converted = from_keras(model)
    assert io_names(converted) == (["features"], ["output"])  # call()'s parameter name
    assert dims(converted.graph.input[0]) == ["batch", 4]  # batch of the first call not baked in
    assert_parity(converted, keras_native(model))


def test_multi_input_output(multi: Any, multi_onnx: onnx.ModelProto) -> None:
    assert_clean(multi_onnx)
    assert io_names(multi_onnx) == (["left", "right"], ["joint", "aux"])
    assert_parity(multi_onnx, keras_native(multi))


def test_dict_inputs_outputs_keep_keys() -> None:
    model = keras_models.dict_io()
    converted = from_keras(model)
    assert_clean(converted)
    ins, outs = io_names(converted)
    assert ins == ["a", "b"]
    assert sorted(outs) == ["first", "total"]

    def native(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        out = model({"a": a, "b": b}, training=False)
        return [np.asarray(out[name]) for name in outs]

    assert_parity(converted, native)


def test_other_dynamic_dims_get_stable_names() -> None:
    model = keras_models.sequence_model()
    converted = from_keras(model)
    assert dims(converted.graph.input[0]) == ["batch", "tokens_dim1", 8]
    out = dims(converted.graph.output[0])
    assert out[0] == "batch" and out[2] == 4
    assert isinstance(out[1], str) and not out[1].startswith("unk__")
    assert from_keras(model, validate=False).graph.input[0] == converted.graph.input[0]  # stable


def test_signature_count_mismatch(multi: Any) -> None:
    with pytest.raises(InputError, match="2 input"):
        from_keras(multi, input_signature=[tf.TensorSpec((None, 4), tf.float32)])


def test_opset_option(cnn: Any) -> None:
    converted = from_keras(cnn, opset=17, validate=False)
    assert {o.domain: o.version for o in converted.opset_import}[""] == 17
    for bad in (19, 8, True):
        with pytest.raises(VersionError, match="opset"):
            from_keras(cnn, opset=bad)


# ------------------------------------------------------------------------------------- files
def test_keras_file_round_trip(files: Path, cnn: Any, cnn_onnx: onnx.ModelProto) -> None:
    converted = from_keras(files / "cnn.keras")
    assert_clean(converted)
    assert io_names(converted) == io_names(cnn_onnx)
    assert _meta.get_layouts(converted) == {"image": "NHWC"}
    assert_parity(converted, keras_native(cnn))


def test_h5_file_round_trip(files: Path, cnn: Any) -> None:
    converted = from_keras(str(files / "cnn.h5"))
    assert io_names(converted) == (["image"], ["logits"])
    assert_parity(converted, keras_native(cnn))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    marker = tmp_path / "lambda_ran.txt"
    monkeypatch.setenv(keras_models.MARKER_ENV, str(marker))
    model = keras_models.lambda_model()
    path = tmp_path / f"lam{suffix}"
    model.save(path)
    marker.unlink()  # building the model ran the lambda once; from here on it must not run
    with pytest.raises(UnsafeModelError) as info:
        from_keras(path)
    message = str(info.value)
    assert "Lambda" in message and "evil" in message and "arbitrary" in message
    assert "build it in Python" in message and "trusted=True" in message
    assert not marker.exists()


def test_trusted_file_runs_lambda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "lambda_ran.txt"
    monkeypatch.setenv(keras_models.MARKER_ENV, str(marker))
    model = keras_models.lambda_model()
    path = tmp_path / "lam.keras"
    model.save(path)
    marker.unlink()
    converted = from_keras(path, trusted=True)
    assert marker.exists()  # trusted=True really runs the stored code
    assert io_names(converted) == (["x"], ["y"])
    assert_parity(converted, keras_native(model))


def test_keras_file_with_oversized_config_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b" " * (65 * 2**20))  # compresses to ~65 KB
    with pytest.raises(ModelFileError, match=r"config\.json claims"):
        from_keras(path)


def test_keras_file_with_function_gadget_refused(tmp_path: Path, files: Path) -> None:
    """A config that names ``os.system`` as an activation is not resolved (Keras safe mode)."""
    with zipfile.ZipFile(files / "cnn.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["activation"] = {
                "module": "os",
                "class_name": "function",
                "config": "system",
                "registered_name": "function",
            }
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "gadget.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match="system") as info:
        from_keras(path, validate=False)
    assert len(str(info.value)) < 1500  # the reason, not Keras' whole config dump


def test_saved_model_directory(files: Path, cnn: Any) -> None:
    converted = from_keras(files / "saved")
    assert_clean(converted)
    assert io_names(converted) == (["image"], ["output_0"])  # the serving signature's names
    assert _meta.get_layouts(converted) == {"image": "NHWC"}  # the graph's conv reads it channels-last
    assert_parity(converted, keras_native(cnn))
    told = from_keras(files / "saved", layouts={"image": "NCHW"}, validate=False)
    assert _meta.get_layouts(told) == {"image": "NCHW"}  # what the user says wins


@pytest.fixture(scope="module")
def writer_saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SavedModel whose serving function writes a marker file when it runs."""
    path, marker = keras_models.file_writing_saved_model(tmp_path_factory.mktemp("writer"))
    assert not marker.exists()  # saving traces, it does not run
    return path, marker


def test_saved_model_with_file_ops_refused_before_loading(writer_saved_model: tuple[Path, Path]) -> None:
    path, marker = writer_saved_model
    with pytest.raises(UnsafeModelError) as info:
        from_keras(path)
    assert "WriteFile" in str(info.value) and "trusted=True" in str(info.value)
    assert not marker.exists()


def test_trusted_saved_model_loads(writer_saved_model: tuple[Path, Path]) -> None:
    path, marker = writer_saved_model
    converted = from_keras(path, trusted=True, validate=False)
    assert io_names(converted) == (["x"], ["y"])
    assert "WriteFile" not in {n.op_type for n in converted.graph.node}  # tf2onnx prunes it
    assert not marker.exists()  # loading and converting ran nothing


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: d / "missing.keras", ModelFileError, "does not exist"),
        (lambda d: d, ModelFileError, "not a SavedModel"),
        (lambda d: (d / "w.txt").write_text("x") and d / "w.txt", ModelFileError, "not a Keras model"),
        (lambda d: (d / "bad.keras").write_bytes(b"nope") and d / "bad.keras", ModelFileError, "bad.keras"),
    ],
)
def test_bad_paths(tmp_path: Path, make: Callable[[Path], Path], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        from_keras(make(tmp_path))


def test_unsupported_source_type() -> None:
    with pytest.raises(InputError, match=r"cannot convert a builtins\.int"):
        from_keras(42)


# ------------------------------------------------------------------------------- tf.function
def test_tf_function_with_own_signature() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None, 3), tf.float32)])
    def blend(x: Any, y: Any) -> Any:
        return {"mix": tf.tanh(x) * 0.5 + y, "diff": x - y}

    converted = from_keras(blend)
    assert_clean(converted)
    ins, outs = io_names(converted)
    assert ins == ["x", "y"] and sorted(outs) == ["diff", "mix"]
    assert_parity(converted, lambda x, y: [np.asarray(blend(x, y)[k]) for k in outs])


def test_tf_function_signature_argument() -> None:
    @tf.function
    def square(v: Any) -> Any:
        return v * v

    with pytest.raises(InputError, match="input_signature"):
        from_keras(square)
    converted = from_keras(square, input_signature=[tf.TensorSpec((None, 2), tf.float32, name="values")])
    assert io_names(converted) == (["values"], ["output"])
    assert_parity(converted, lambda v: [v * v])


def test_concrete_function() -> None:
    @tf.function
    def scale(v: Any) -> Any:
        return v * 3.0

    concrete = scale.get_concrete_function(tf.TensorSpec((None, 2), tf.float32, name="v"))
    converted = from_keras(concrete)
    assert io_names(converted) == (["v"], ["output"])
    assert_parity(converted, lambda v: [v * 3.0])


def test_output_dim0_not_following_batch_is_not_called_batch() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
    def flat(x: Any) -> Any:
        return {"flat": tf.reshape(x, [-1]), "row_sums": tf.reduce_sum(x, axis=1)}

    converted = from_keras(flat)
    out = {v.name: dims(v) for v in converted.graph.output}
    assert out["row_sums"] == ["batch"]
    assert out["flat"] == ["flat_dim0"]
    assert io_names(converted)[1] == ["flat", "row_sums"]  # the dict's order
    assert_parity(converted, lambda x: [x.reshape(-1), x.sum(axis=1)])


def test_tf_function_over_keras_model(cnn: Any) -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32, name="img")])
    def probs(img: Any) -> Any:
        return tf.nn.softmax(cnn(img, training=False))

    converted = from_keras(probs)
    assert io_names(converted) == (["img"], ["output"])
    assert _meta.get_layouts(converted) == {"img": "NHWC"}  # the graph shows its conv reading it


# ---------------------------------------------------------------------------- failing loudly
@pytest.fixture(scope="module")
def file_reader() -> Any:
    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name="paths")])
    def read_lengths(paths: Any) -> Any:
        return {"length": tf.strings.length(tf.io.read_file(paths[0])), "count": tf.shape(paths)[0]}

    return read_lengths


def test_tf2onnx_alone_reports_success_on_unsupported_ops(file_reader: Any) -> None:
    """The fact we guard against: tf2onnx's Python API returns an invalid model, no exception."""
    convert = importlib.import_module("tf2onnx.convert")
    raw, _ = convert.from_function(file_reader, input_signature=file_reader.input_signature, opset=18)
    assert {"ReadFile", "StringLength"} <= {n.op_type for n in raw.graph.node}
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(raw, full_check=True)


def test_file_reading_tf_function_refused_before_it_runs(file_reader: Any, tmp_path: Path) -> None:
    with pytest.raises(UnsafeModelError) as info:
        from_keras(file_reader)
    assert "ReadFile (reads files; at " in str(info.value) and "trusted=True" in str(info.value)


def test_unsupported_ops_fail_listing_every_op_and_node(file_reader: Any) -> None:
    with pytest.raises(UnsupportedOpsError) as info:
        from_keras(file_reader, trusted=True)
    err = info.value
    assert set(err.ops) == {"ReadFile", "StringLength"}
    assert all(nodes for nodes in err.ops.values())
    for op, nodes in err.ops.items():
        assert op in str(err)
        assert all(node in str(err) for node in nodes)


def test_unsupported_ops_fail_even_without_validation() -> None:
    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def special(x: Any) -> Any:
        return tf.math.bessel_i0e(x) + tf.math.lgamma(x)

    with pytest.raises(UnsupportedOpsError) as info:
        from_keras(special, validate=False)
    assert set(info.value.ops) == {"BesselI0e", "Lgamma"}


@pytest.fixture(scope="module")
def noisy() -> Any:
    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def add_noise(x: Any) -> Any:
        return x + tf.random.normal(tf.shape(x))

    return add_noise


def test_mismatch_raises_validation_error_with_table(noisy: Any) -> None:
    with pytest.raises(ValidationError) as info:
        from_keras(noisy)
    report = info.value.report
    assert not report
    assert {row.batch for row in report.failures} == {1, 7}
    assert "max abs err" in str(info.value) and "output" in str(info.value)


def test_validate_false_skips_check(noisy: Any) -> None:
    converted = from_keras(noisy, validate=False)
    assert io_names(converted) == (["x"], ["output"])


def test_validation_inputs_are_used_and_named_in_the_error(noisy: Any) -> None:
    given = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(ValidationError) as info:
        from_keras(noisy, validation_inputs={"x": given})
    assert [r.batch for r in info.value.report.rows] == [3]
    assert "feeds #1: validation_inputs[0]: x float32[3,4] in [-1, 1]" in str(info.value)


def test_tolerances_are_used(noisy: Any) -> None:
    # outputs spanning +-100, noise of ~N(0, 2): a tolerance of 10 passes the noise, and is still far
    # below the outputs' spread (else the check would be uninformative and fail as such)
    wide = {"x": np.linspace(-100, 100, 28, dtype=np.float32).reshape(7, 4)}
    with pytest.raises(ValidationError):
        from_keras(noisy, validation_inputs=wide)  # the default tolerances fail on this model ...
    from_keras(noisy, validation_inputs=wide, atol=10.0)  # ... a loose atol passes ...
    with pytest.raises(ValidationError):
        from_keras(noisy, validation_inputs=wide, rtol=0.0, atol=1e-3)
    from_keras(noisy, validation_inputs=wide, rtol=0.1, atol=1e-3)  # ... and so does a loose rtol


# ------------------------------------------------------------------------------- environment
@pytest.mark.parametrize("before", [None, "1"])
def test_tf_cpp_min_log_level_restored(monkeypatch: pytest.MonkeyPatch, cnn: Any, before: str | None) -> None:
    if before is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", before)
    monkeypatch.delitem(sys.modules, "tf2onnx.convert")  # re-run tf2onnx's import-time side effect
    from_keras(cnn, validate=False)
    assert "tf2onnx.convert" in sys.modules
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == before


@pytest.mark.parametrize(
    ("module", "package"), [("tensorflow", "tensorflow"), ("tf2onnx.convert", "tf2onnx")]
)
def test_missing_dependency(monkeypatch: pytest.MonkeyPatch, cnn: Any, module: str, package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as info:
        from_keras(cnn, validate=False)
    assert info.value.package == package and info.value.extra == "keras"
    assert "onnxstitch[keras]" in str(info.value)


def test_importing_the_converter_does_not_import_tensorflow() -> None:
    code = (
        "import sys, onnxstitch.converters._keras as k; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh process importing Keras on the torch backend (~10 s of CPU)
def test_keras_on_another_backend_is_a_clear_error() -> None:
    code = (
        "import keras, onnxstitch\n"
        "x = keras.Input((4,), name='x')\n"
        "model = keras.Model(x, keras.layers.Dense(2)(x))\n"
        "try:\n"
        "    onnxstitch.from_keras(model)\n"
        "except onnxstitch.errors.ConversionError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "REFUSED" in done.stdout, done.stderr[-2000:]
    assert "'torch' backend" in done.stdout and "KERAS_BACKEND=tensorflow" in done.stdout
