"""load / save / as_model with real onnx and onnxruntime files in tmp_path."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _files_models import make_model
from onnx import numpy_helper

from onnxstitch import files
from onnxstitch.errors import (
    IntegrityError,
    ModelFileError,
    ModelTooLargeError,
    UnsafeModelError,
    VersionError,
)
from onnxstitch.files import manifest as mf
from onnxstitch.files._limits import ort_max_ir_version, ort_max_opset


def _run(model_or_path: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    src = (
        model_or_path.SerializeToString()
        if isinstance(model_or_path, onnx.ModelProto)
        else str(model_or_path)
    )
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_round_trip_inline(tmp_path: Path, model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    out = files.save(model, tmp_path / "m.onnx")
    assert out == tmp_path / "m.onnx"
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    loaded = files.load(out)
    assert loaded.SerializeToString() == before


def test_save_external_data_does_not_mutate_and_runs(tmp_path: Path, model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    files.save(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    raw = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    w, b = raw.graph.initializer
    assert w.data_location == onnx.TensorProto.EXTERNAL  # 1024 bytes >= size_threshold
    assert b.data_location == onnx.TensorProto.DEFAULT  # 64 bytes stay inline
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), _run(model, x), rtol=0, atol=0)
    loaded = files.load(tmp_path / "m.onnx")
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    assert loaded.SerializeToString() == before


def test_size_threshold_moves_small_tensors_too(tmp_path: Path, model: onnx.ModelProto) -> None:
    files.save(model, tmp_path / "m.onnx", external_data=True, size_threshold=0)
    raw = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in raw.graph.initializer)
    offsets = [int(e.value) for t in raw.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets == [0, 1024] and all(o % 64 == 0 for o in offsets)
    assert files.load(tmp_path / "m.onnx").SerializeToString() == model.SerializeToString()


def test_external_data_in_subgraph(tmp_path: Path) -> None:
    inner = make_model()
    then_graph = inner.graph
    else_graph = make_model(seed=1).graph
    cond = onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    node = onnx.helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)
    outer = onnx.helper.make_graph(
        [node],
        "outer",
        [cond, *inner.graph.input],
        [onnx.helper.make_tensor_value_info("y", 1, ["batch", 16])],
    )
    for g in (outer.node[0].attribute[0].g, outer.node[0].attribute[1].g):
        del g.input[:]
    m = onnx.helper.make_model(outer, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    before = m.SerializeToString()
    files.save(m, tmp_path / "if.onnx", external_data=True)
    assert m.SerializeToString() == before
    raw = onnx.load(str(tmp_path / "if.onnx"), load_external_data=False)
    assert raw.graph.node[0].attribute[0].g.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    loaded = files.load(tmp_path / "if.onnx")
    assert loaded.SerializeToString() == before
    sess = ort.InferenceSession(str(tmp_path / "if.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((2, 16), np.float32)
    ref = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    for c in (True, False):
        feeds = {"c": np.array(c), "x": x}
        np.testing.assert_array_equal(sess.run(None, feeds)[0], ref.run(None, feeds)[0])


def test_typed_data_fields_written_as_raw_bytes(tmp_path: Path) -> None:
    m = make_model()
    w = m.graph.initializer[0]
    values = numpy_helper.to_array(w).copy()
    w.ClearField("raw_data")
    w.float_data.extend(values.ravel().tolist())
    files.save(m, tmp_path / "m.onnx", external_data=True)
    loaded = files.load(tmp_path / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), values)


def test_external_data_false_keeps_inline(tmp_path: Path, model: onnx.ModelProto) -> None:
    files.save(model, tmp_path / "m.onnx", external_data=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_save_over_existing_is_atomic_on_error(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = tmp_path / "m.onnx"
    files.save(model, target)
    original = target.read_bytes()
    bad = make_model()
    t = bad.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "elsewhere.bin"
    with pytest.raises(ModelFileError, match="never loaded"):
        files.save(bad, target)
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_save_errors(tmp_path: Path, model: onnx.ModelProto) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        files.save(model, tmp_path / "nope" / "m.onnx")
    with pytest.raises(ModelFileError, match="is a folder"):
        files.save(model, tmp_path)
    with pytest.raises(ModelFileError, match=r"needs an onnx\.ModelProto"):
        files.save(b"bytes", tmp_path / "m.onnx")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_save_file_mode_follows_umask(tmp_path: Path, model: onnx.ModelProto) -> None:
    old = os.umask(0o027)
    try:
        files.save(model, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o640


def test_as_model(tmp_path: Path, model: onnx.ModelProto) -> None:
    assert files.as_model(model) is model
    files.save(model, tmp_path / "m.onnx")
    assert files.as_model(tmp_path / "m.onnx").SerializeToString() == model.SerializeToString()
    assert files.as_model(str(tmp_path / "m.onnx")).SerializeToString() == model.SerializeToString()
    with pytest.raises(ModelFileError, match="not int"):
        files.as_model(3)  # type: ignore[arg-type]


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_round_trip_and_bit_flip(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx", manifest=True, external_data=True)
    listed = mf.read_manifest(target)
    assert sorted(listed) == ["m.onnx", "m.onnx.data"]
    assert listed["m.onnx"] == mf.sha256_file(target)
    files.load(target, verify=True)
    data = tmp_path / "m.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0x01  # one weight bit: passes the checker and runs
    data.write_bytes(bytes(blob))
    assert files.load(target).graph.initializer  # without verify it loads
    onnx.checker.check_model(str(target))
    with pytest.raises(IntegrityError, match=r"m\.onnx\.data changed since the manifest"):
        files.load(target, verify=True)


def test_manifest_detects_changed_model_file(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx", manifest=True)
    blob = bytearray(target.read_bytes())
    blob[-20] ^= 0x01
    target.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=r"m\.onnx changed since"):
        files.load(target, verify=True)


def test_missing_manifest_says_how_to_create_one(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx")
    with pytest.raises(IntegrityError, match=r"no manifest m\.onnx\.sha256\.json") as info:
        files.load(target, verify=True)
    assert "write_manifest" in str(info.value)
    written = mf.write_manifest(target)
    assert written == tmp_path / "m.onnx.sha256.json"
    files.load(target, verify=True)


def test_write_manifest_finds_external_files(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx", external_data=True)
    mf.write_manifest(target)
    assert sorted(mf.read_manifest(target)) == ["m.onnx", "m.onnx.data"]


def test_save_without_manifest_removes_stale_one(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx", manifest=True)
    files.save(make_model(seed=3), target)
    assert not (tmp_path / "m.onnx.sha256.json").exists()


def test_malformed_manifest(tmp_path: Path, model: onnx.ModelProto) -> None:
    target = files.save(model, tmp_path / "m.onnx")
    (tmp_path / "m.onnx.sha256.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        files.load(target, verify=True)
    (tmp_path / "m.onnx.sha256.json").write_text('{"files": {"m.onnx": 3}}')
    with pytest.raises(IntegrityError, match=r"is not an onnxstitch\.sha256/1 manifest"):
        files.load(target, verify=True)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 40, "zip archive"),
        (pickle.dumps({"a": 1}, protocol=4), "pickle"),
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 40, "HDF5"),
        (b'{"model": 1}', "JSON"),
        (b"name: resnet\nlayers: 3\n", "YAML"),
        (b"import torch\nprint(1)\n", "Python"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS"),
        (
            b'<ir_version: 8, opset_import: ["" : 18]>\nagraph (float[N] x) => (float[N] y) {y = Relu(x)}',
            "text form",
        ),
        (b"\x1f\x8b\x08\x00" + b"\0" * 20, "gzip"),
    ],
)
def test_not_onnx_is_named(tmp_path: Path, content: bytes, expected: str) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match=expected) as info:
        files.load(p)
    assert str(info.value).startswith("x.onnx is ")


def test_real_zip_named(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(ModelFileError, match=r"zip archive \(a \.keras, \.pt2"):
        files.load(p)


def test_truncated_protobuf(tmp_path: Path, model: onnx.ModelProto) -> None:
    data = model.SerializeToString()
    p = tmp_path / "m.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated") as info:
        files.load(p)
    assert str(info.value).startswith("m.onnx is not a valid ONNX model")


def test_header_only_model_has_no_graph(tmp_path: Path) -> None:
    m = onnx.ModelProto(ir_version=10, producer_name="x")
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelFileError, match="has no graph"):
        files.load(p)


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        files.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="is a folder"):
        files.load(tmp_path)


def test_invalid_graph_fails_checker(tmp_path: Path, model: onnx.ModelProto) -> None:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].input[1] = "undefined_tensor"
    p = tmp_path / "m.onnx"
    p.write_bytes(bad.SerializeToString())
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        files.load(p)


def test_versions_beyond_onnxruntime(tmp_path: Path) -> None:
    if ort.__version__.startswith("1.32."):
        assert (ort_max_opset(), ort_max_ir_version()) == (28, 14)  # measured by hand
    opset, ir = ort_max_opset(), ort_max_ir_version()
    files.save(make_model(opset=ort_max_opset(), ir_version=ort_max_ir_version()), tmp_path / "ok.onnx")
    files.load(tmp_path / "ok.onnx")
    for name, kwargs, expected in [
        (
            "opset.onnx",
            {"opset": opset + 1},
            f"ai.onnx opset {opset + 1} \\(onnxruntime runs up to {opset}\\)",
        ),
        ("ir.onnx", {"ir_version": ir + 1}, f"IR version {ir + 1} \\(onnxruntime runs up to {ir}\\)"),
    ]:
        (tmp_path / name).write_bytes(make_model(**kwargs).SerializeToString())
        with pytest.raises(VersionError, match=expected):
            files.load(tmp_path / name)


def test_file_past_2gb_is_too_large(tmp_path: Path, model: onnx.ModelProto) -> None:
    p = tmp_path / "big.onnx"
    with open(p, "wb") as fh:
        fh.write(model.SerializeToString())
        fh.truncate(2**31)  # sparse: no disk or memory used
    with pytest.raises(ModelTooLargeError, match="past protobuf's 2 GB limit") as info:
        files.load(p)
    assert "external_data=True" in str(info.value)


def test_external_refs_are_checked_by_check_file(external_model) -> None:  # type: ignore[no-untyped-def]
    good = external_model()
    assert [p.name for p in files.check_file(good)] == ["w.bin"]
    bad = external_model(location="../w.bin", data_name=None)
    with pytest.raises(UnsafeModelError, match=r"'\.\.'"):
        files.check_file(bad)


def test_invalid_utf8_text_is_corrupt(tmp_path: Path) -> None:
    blob = make_model().SerializeToString().replace(b"linear", b"\xff\xfeinea", 1)  # the graph's name
    p = tmp_path / "m.onnx"
    p.write_bytes(blob)
    with pytest.raises(ModelFileError, match=r"the text of model\.graph\.name is not valid UTF-8"):
        files.load(p)


def test_load_header_reads_no_weights(tmp_path: Path) -> None:
    """The header of a saved model: everything but the initializers' bytes, inline or external."""
    from onnxstitch.files._read import load_header

    model = make_model()
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 64)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(big, "big"))
    for external in (False, True):
        path = tmp_path / f"m{external}.onnx"
        files.save(model, path, external_data=external)
        header = load_header(path)
        expected = onnx.load(str(path), load_external_data=False)
        for tensor in expected.graph.initializer:
            tensor.ClearField("raw_data")
        assert header == expected
        shapes = [list(t.dims) for t in header.graph.initializer]
        assert shapes == [list(t.dims) for t in model.graph.initializer]
