"""Weights: external data resolved against each part's own folder, identical weights stored once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.compose
import pytest
from compose_helpers import assert_valid, linear, run

import onnxstitch as ox
from onnxstitch.errors import ModelFileError, UnsafeModelError

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _save_external(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


@pytest.fixture
def two_folders(tmp_path):
    a, b = linear("a", 4, 4, 0), linear("b", 4, 2, 1)
    return a, b, _save_external(a, tmp_path / "a"), _save_external(b, tmp_path / "b")


def test_onnx_compose_shares_one_weights_file(two_folders, monkeypatch):
    """onnx.compose keeps both parts' references to 'weights.bin': one file cannot hold both."""
    _, _, pa, pb = two_folders
    ma = onnx.load(str(pa), load_external_data=False)
    mb = onnx.load(str(pb), load_external_data=False)
    monkeypatch.chdir(pa.parent)  # onnx.compose's check resolves 'weights.bin' against the cwd
    naive = onnx.compose.merge_models(ma, mb, io_map=[("y", "x")], prefix1="a/", prefix2="b/")
    locations = {e.value for t in naive.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {
        "weights.bin"
    }  # two different weight sets, one file name: resolved against one folder


def test_each_part_reads_its_own_weights_bin(two_folders, rng, monkeypatch, tmp_path):
    a, b, pa, pb = two_folders
    monkeypatch.chdir(pa.parent)  # the working directory holds a's weights.bin: must not matter for b
    merged = ox.chain({"a": pa, "b": str(pb)})
    assert_valid(merged)
    assert all(not t.external_data for t in merged.graph.initializer)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], run(b, {"x": run(a, {"x": x})["y"]})["y"], **TOL)


def test_model_proto_with_unloaded_external_data_refused(two_folders):
    _, _, pa, _ = two_folders
    lazy = onnx.load(str(pa), load_external_data=False)
    with pytest.raises(ModelFileError, match="part 'a' was given as a ModelProto whose external data"):
        ox.merge({"a": lazy})


def test_external_data_outside_folder_refused(two_folders, tmp_path):
    _, _, pa, _ = two_folders
    model = onnx.load(str(pa), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../b/weights.bin"
    evil = tmp_path / "a" / "evil.onnx"
    onnx.save_model(model, str(evil))
    with pytest.raises(UnsafeModelError, match=r"part 'a': .*climbs out of the model's folder"):
        ox.merge({"a": evil})


def test_missing_part_file(tmp_path):
    with pytest.raises(ModelFileError, match="part 'a': model file"):
        ox.merge({"a": tmp_path / "nope.onnx"})
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        ox.merge({"a": empty})


def test_identical_weights_stored_once_across_path_and_proto(two_folders, rng):
    a, _, pa, _ = two_folders
    merged = ox.merge({"p": pa, "q": a}, inputs={"x": ["p:x", "q:x"]})
    assert len(merged.graph.initializer) == 2
    out = run(merged, {"x": (x := rng.standard_normal((2, 4)).astype(np.float32))})
    np.testing.assert_allclose(out["p.y"], run(a, {"x": x})["y"], **TOL)
    np.testing.assert_allclose(out["q.y"], out["p.y"], **TOL)


def test_equal_shapes_different_values_not_shared():
    a, b = linear("a", 4, 4, 0), linear("b", 4, 4, 1)
    merged = ox.chain({"a": a, "b": b})
    assert len(merged.graph.initializer) == 4


def test_every_unreadable_part_reported(tmp_path):
    with pytest.raises(ModelFileError) as info:
        ox.merge({"a": tmp_path / "a.onnx", "b": tmp_path / "b.onnx"})
    assert "several parts cannot be read" in str(info.value)
    assert "part 'a'" in str(info.value)
    assert "part 'b'" in str(info.value)
