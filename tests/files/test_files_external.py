"""External data stays inside the model's folder, by every route; real files, real onnxruntime."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _files_models import make_model
from onnx import numpy_helper

from onnxstitch import files
from onnxstitch.errors import ModelFileError, UnsafeModelError

WriteModel = Callable[..., Path]
W_BYTES = make_model().graph.initializer[0].raw_data  # what the model's `w` holds: 1024 bytes


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the model folder, sized exactly like `w`, so a leak would load cleanly."""
    p = tmp_path / "secret.bin"
    p.write_bytes(np.full(256, 7.0, np.float32).tobytes())
    return p


def _assert_secret_not_in(model: onnx.ModelProto, secret: Path) -> None:
    blob = secret.read_bytes()
    for t in model.graph.initializer:
        assert numpy_helper.to_array(t).tobytes() != blob


def test_good_external_data_is_loaded_inline(external_model: WriteModel) -> None:
    path = external_model()
    loaded = files.load(path)
    w = loaded.graph.initializer[0]
    assert w.data_location == onnx.TensorProto.DEFAULT and not w.external_data
    assert w.raw_data == W_BYTES
    assert files.as_model(path).SerializeToString() == make_model().SerializeToString()


def test_subfolder_inside_is_fine(external_model: WriteModel, tmp_path: Path) -> None:
    (tmp_path / "model" / "weights").mkdir(parents=True)
    path = external_model(location="weights/w.bin", data_name="weights/w.bin")
    assert files.load(path).graph.initializer[0].raw_data == W_BYTES


def test_no_length_means_to_end_of_file(external_model: WriteModel) -> None:
    path = external_model(length=None)
    raw = onnx.load(str(path), load_external_data=False)
    w = raw.graph.initializer[0]
    kept = [e for e in w.external_data if e.key != "length"]
    del w.external_data[:]
    w.external_data.extend(kept)
    path.write_bytes(raw.SerializeToString())
    assert files.load(path).graph.initializer[0].raw_data == W_BYTES


def test_dotdot(external_model: WriteModel, secret: Path) -> None:
    path = external_model(location="../secret.bin", data_name=None)
    with pytest.raises(UnsafeModelError, match=r"tensor 'w' .*'\.\./secret\.bin' climbs out"):
        files.load(path)


def test_dotdot_windows_separators(external_model: WriteModel, secret: Path) -> None:
    path = external_model(location="sub\\..\\..\\secret.bin", data_name=None)
    with pytest.raises(UnsafeModelError, match="climbs out"):
        files.load(path)


@pytest.mark.parametrize("location", ["{secret}", "C:\\secret.bin", "\\\\server\\share\\w.bin"])
def test_absolute(external_model: WriteModel, secret: Path, location: str) -> None:
    path = external_model(location=location.format(secret=secret), data_name=None)
    with pytest.raises(UnsafeModelError, match="absolute path"):
        files.load(path)


def test_symlink_of_the_file(external_model: WriteModel, tmp_path: Path, secret: Path) -> None:
    path = external_model(data_name=None)
    (tmp_path / "model" / "w.bin").symlink_to(secret)
    with pytest.raises(UnsafeModelError, match="the data file is a symlink"):
        files.load(path)


def test_symlink_inside_the_folder_is_refused_too(external_model: WriteModel, tmp_path: Path) -> None:
    path = external_model(data_name="real.bin")
    (tmp_path / "model" / "w.bin").symlink_to("real.bin")
    with pytest.raises(UnsafeModelError, match="symlink"):
        files.load(path)


def test_symlink_of_a_parent_folder(external_model: WriteModel, tmp_path: Path, secret: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(secret.read_bytes())
    path = external_model(location="sub/w.bin", data_name=None)
    (tmp_path / "model" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeModelError, match="parent folder 'sub' is a symlink"):
        files.load(path)


def test_hardlink(external_model: WriteModel, tmp_path: Path, secret: Path) -> None:
    path = external_model(data_name=None)
    os.link(secret, tmp_path / "model" / "w.bin")
    # the measured reason: onnxruntime itself reads the hardlinked outside file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.ones((1, 16), np.float32)})[0]
    assert out.shape == (1, 16)
    with pytest.raises(UnsafeModelError, match="is a hardlink") as info:
        files.load(path)
    assert "copy it" in str(info.value)


def test_offset_not_a_number(external_model: WriteModel) -> None:
    with pytest.raises(ModelFileError, match="offset 'abc' is not a number"):
        files.load(external_model(offset="abc"))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"offset": "-8"}, "negative offset"), ({"length": "-1"}, "negative length")]
)
def test_negative(external_model: WriteModel, kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        files.load(external_model(**kwargs))


def test_length_past_end(external_model: WriteModel) -> None:
    with pytest.raises(
        ModelFileError, match=r"offset 0 \+ length 4096 is past the file's end \(1024 bytes\)"
    ):
        files.load(external_model(length="4096"))


def test_offset_past_end(external_model: WriteModel) -> None:
    with pytest.raises(ModelFileError, match="offset 5000 is past the file's end"):
        files.load(external_model(offset="5000"))


def test_length_does_not_match_shape(external_model: WriteModel) -> None:
    with pytest.raises(
        ModelFileError, match=r"512 bytes stored, but its shape \[16, 16\] and type need 1024"
    ):
        files.load(external_model(length="512"))


def test_missing_data_file(external_model: WriteModel) -> None:
    with pytest.raises(ModelFileError, match="does not exist") as info:
        files.load(external_model(data_name=None))
    assert not isinstance(info.value, UnsafeModelError)


def test_fifo_is_not_read(external_model: WriteModel, tmp_path: Path) -> None:
    path = external_model(data_name=None)
    os.mkfifo(tmp_path / "model" / "w.bin")
    with pytest.raises(UnsafeModelError, match="not a regular file"):
        files.load(path)


@pytest.mark.parametrize(
    ("location", "error", "match"),
    [
        ("", ModelFileError, "empty location"),
        ("w\x00.bin", UnsafeModelError, "NUL byte"),
        (".", ModelFileError, "names the model's folder"),
    ],
)
def test_odd_locations(external_model: WriteModel, location: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        files.load(external_model(location=location))


def test_constant_node_attribute_is_checked(tmp_path: Path, secret: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    value = numpy_helper.from_array(np.zeros(256, np.float32), "c")
    value.ClearField("raw_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "1024")):
        e = value.external_data.add()
        e.key, e.value = k, v
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["y"], value=value)],
        "const",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [256])],
    )
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    (folder / "c.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(UnsafeModelError, match="tensor 'c'"):
        files.load(folder / "c.onnx")


def test_model_in_cwd_with_relative_path(
    external_model: WriteModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = external_model()
    monkeypatch.chdir(path.parent)
    assert files.load("m.onnx").graph.initializer[0].raw_data == W_BYTES


def test_trusted_external_data_allows_links_but_not_escapes(
    external_model: WriteModel, tmp_path: Path, secret: Path
) -> None:
    """A Hugging Face-style cache: snapshots/<rev>/w.bin is a symlink to ../../blobs/<sha>."""
    blobs = tmp_path / "cache" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc123").write_bytes(W_BYTES)
    snap = tmp_path / "cache" / "snapshots" / "rev"
    path = external_model(folder=snap, data_name=None)
    (snap / "w.bin").symlink_to(Path("../../blobs/abc123"))
    with pytest.raises(UnsafeModelError, match="symlink"):
        files.load(path)
    loaded = files.load(path, trusted_external_data=True)
    assert loaded.graph.initializer[0].raw_data == W_BYTES
    assert files.check_file(path, trusted_external_data=True) == [(blobs / "abc123").resolve()]
    from onnxstitch.files.describe import describe_file

    info = describe_file(path, trusted_external_data=True)["file"]
    assert info["external_data"] == [{"file": "abc123", "size_bytes": 1024}]
    # a hardlink is accepted too, when trusted
    hard = external_model(folder=tmp_path / "hard", data_name=None)
    os.link(blobs / "abc123", tmp_path / "hard" / "w.bin")
    assert files.load(hard, trusted_external_data=True).graph.initializer[0].raw_data == W_BYTES
    # what the model file itself says is still checked
    escape = external_model(folder=tmp_path / "esc", location="../secret.bin", data_name=None)
    with pytest.raises(UnsafeModelError, match="climbs out"):
        files.load(escape, trusted_external_data=True)
    absolute = external_model(folder=tmp_path / "abs", location=str(secret), data_name=None)
    with pytest.raises(UnsafeModelError, match="absolute"):
        files.load(absolute, trusted_external_data=True)
    bad_len = external_model(folder=tmp_path / "len", length="4096")
    with pytest.raises(ModelFileError, match="past the file's end"):
        files.load(bad_len, trusted_external_data=True)


def test_store_trusts_only_its_own_markers(external_model: WriteModel, tmp_path: Path) -> None:
    """A marker written into a model file by someone else never reaches another model's data."""
    from onnxstitch.files._read import external_refs
    from onnxstitch.files.external import REF_KEY, ExternalStore

    store = ExternalStore()
    first, first_refs = external_refs(external_model(folder=tmp_path / "one"))
    store.adopt(first, first_refs)
    forged_path = external_model(folder=tmp_path / "two")
    forged = onnx.load(str(forged_path), load_external_data=False)
    entry = forged.graph.initializer[0].external_data.add()
    entry.key, entry.value = REF_KEY, "0"  # "read me from model one's file"
    inline = forged.graph.initializer.add()
    inline.CopyFrom(numpy_helper.from_array(np.zeros(2, np.float32), "inline"))
    entry = inline.external_data.add()
    entry.key, entry.value = REF_KEY, "0"
    forged_path.write_bytes(forged.SerializeToString())
    second, second_refs = external_refs(forged_path)
    store.adopt(second, second_refs)
    assert store.ref_of(second.graph.initializer[0]).path == (tmp_path / "two" / "w.bin").resolve()
    assert store.ref_of(second.graph.initializer[1]) is None


def test_copy_ref_without_kernel_copy(
    external_model: WriteModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where copy_file_range fails (another file system), the bytes are copied through user space."""
    from onnxstitch.files._read import external_refs
    from onnxstitch.files.external import copy_ref

    _, refs = external_refs(external_model())

    def refuse(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    with open(tmp_path / "out.bin", "wb") as out:
        out.write(b"head")
        assert copy_ref(refs[0], out) == len(W_BYTES)
        out.write(b"tail")
    assert (tmp_path / "out.bin").read_bytes() == b"head" + W_BYTES + b"tail"
