"""``ox.diff`` and ``onnxstitch diff`` / ``onnxstitch replace``: part by part, on real merged models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.files import diff as diff_module

RUNNER = CliRunner()


def _part(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 18]>' + text)
    for name, value in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return model


BACKBONE = (
    "b (float[batch, 4] image) => (float[batch, 3] features) { h = MatMul(image, w) \n features = Relu(h) }"
)
HEAD = "h (float[batch, 3] x) => (float[batch, 2] logits) { logits = MatMul(x, w) }"


def _head(seed: int) -> onnx.ModelProto:
    return _part(HEAD, w=np.random.default_rng(seed).standard_normal((3, 2)))


@pytest.fixture(scope="module")
def hybrid() -> onnx.ModelProto:
    backbone = _part(BACKBONE, w=np.random.default_rng(0).standard_normal((4, 3)))
    return ox.chain({"backbone": backbone, "head": _head(1)})


def test_replace_changes_exactly_the_replaced_part(hybrid: onnx.ModelProto) -> None:
    before = hybrid.SerializeToString()
    new_head = _head(2)
    updated = ox.replace(hybrid, "head", new_head)
    result = ox.diff(hybrid, updated)
    assert not result.identical
    assert result.changed_parts == ["head"]
    by_part = {p.part: p for p in result.parts}
    assert by_part["backbone"].status == "identical"
    head = by_part["head"]
    assert head.status == "weights" and not head.ops_added and not head.signature
    [change] = head.weights
    old_w = numpy_helper.to_array(_head(1).graph.initializer[0])
    new_w = numpy_helper.to_array(new_head.graph.initializer[0])
    expected = np.max(np.abs(new_w - old_w)) / np.max(np.abs(old_w))
    assert change.change == "values"
    assert change.relative_change == pytest.approx(float(expected), rel=1e-6)
    assert not result.inputs and not result.outputs and not result.versions
    assert hybrid.SerializeToString() == before  # read only


def test_a_model_against_its_own_resave_is_identical(hybrid: onnx.ModelProto, tmp_path: Path) -> None:
    inline = ox.save(hybrid, tmp_path / "inline.onnx")
    external = ox.save(hybrid, tmp_path / "ext.onnx", external_data=True, size_threshold=16)
    assert (tmp_path / "ext.onnx.data").exists()
    reloaded = ox.load(external)
    assert ox.diff(hybrid, reloaded).identical
    assert ox.diff(inline, external).identical  # hashed from the files, external data streamed
    assert str(ox.diff(hybrid, reloaded)).startswith("identical")


def test_weights_from_external_data_files_are_compared(
    hybrid: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ox.save(hybrid, tmp_path / "old.onnx", external_data=True, size_threshold=16)
    new = ox.save(
        ox.replace(hybrid, "head", _head(3)), tmp_path / "new.onnx", external_data=True, size_threshold=16
    )
    in_memory = ox.diff(hybrid, ox.load(new)).parts[1].weights[0].relative_change
    monkeypatch.setattr(diff_module, "_ELEMENTS", 4)  # the 3x2 weight compared in two pieces
    result = ox.diff(old, new)
    assert result.changed_parts == ["head"]
    assert in_memory is not None and result.parts[1].weights[0].relative_change == pytest.approx(in_memory)


def test_structure_and_signature_changes(hybrid: onnx.ModelProto) -> None:
    deeper = _part(
        "h (float[batch, 3] x) => (float[batch, 2] logits) { t = MatMul(x, w) \n logits = Sigmoid(t) }",
        w=np.random.default_rng(1).standard_normal((3, 2)),
    )
    result = ox.diff(hybrid, ox.replace(hybrid, "head", deeper))
    head = {p.part: p for p in result.parts}["head"]
    assert head.status == "structure" and head.ops_added == {"Sigmoid": 1} and not head.ops_removed
    assert result.changed_parts == ["head"]

    wider = _part(
        "h (float[batch, 3] x) => (float[batch, 5] logits) { logits = MatMul(x, w) }",
        w=np.random.default_rng(1).standard_normal((3, 5)),
    )
    result = ox.diff(hybrid, ox.replace(hybrid, "head", wider))
    head = {p.part: p for p in result.parts}["head"]
    assert head.status == "signature"
    assert any("output logits" in s and "[batch, 2]" in s and "[batch, 5]" in s for s in head.signature)
    assert result.outputs == ["'logits': float32[batch, 2] -> float32[batch, 5]"]
    assert head.weights[0].change == "shape"


def test_added_part_and_opset_change(hybrid: onnx.ModelProto) -> None:
    backbone = ox.extract(hybrid, part="backbone")
    scale = _part("s (float[batch, 2] logits) => (float[batch, 2] scores) { scores = Relu(logits) }")
    three = ox.chain({"backbone": backbone, "head": _head(1), "post": scale}, opset=19)
    result = ox.diff(hybrid, three)
    statuses = {p.part: p.status for p in result.parts}
    assert statuses["post"] == "added"
    assert statuses["backbone"] == "identical" and statuses["head"] == "signature"  # a new seam
    assert result.versions == ["opset ai.onnx: 18 -> 19"]
    assert any("'scores' added" in s for s in result.outputs)


def test_cli_diff_exit_codes_and_json(hybrid: onnx.ModelProto, tmp_path: Path) -> None:
    old = ox.save(hybrid, tmp_path / "old.onnx")
    same = ox.save(ox.load(old), tmp_path / "same.onnx")
    new = ox.save(ox.replace(hybrid, "head", _head(4)), tmp_path / "new.onnx")
    ok = RUNNER.invoke(app, ["diff", str(old), str(same)])
    assert ok.exit_code == 0, ok.output
    assert "identical" in ok.output
    differ = RUNNER.invoke(app, ["diff", str(old), str(new), "--json"])
    assert differ.exit_code == 1, differ.output
    data = json.loads(differ.output)
    assert data["identical"] is False and data["changed_parts"] == ["head"]
    assert data["parts"][1]["weights"][0]["change"] == "values"
    usage = RUNNER.invoke(app, ["diff", str(old), str(tmp_path / "missing.onnx")])
    assert usage.exit_code == 2


def test_cli_replace_writes_the_new_model_and_prints_the_diff(
    hybrid: onnx.ModelProto, tmp_path: Path
) -> None:
    merged = ox.save(hybrid, tmp_path / "m.onnx")
    new_head = ox.save(_head(5), tmp_path / "new_head.onnx")
    out = tmp_path / "m2.onnx"
    result = RUNNER.invoke(app, ["replace", str(merged), f"head={new_head}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "part head: weights" in result.output
    assert ox.diff(merged, out).changed_parts == ["head"]
    bad = RUNNER.invoke(app, ["replace", str(merged), "head", "-o", str(out)])
    assert bad.exit_code == 2
    unknown = RUNNER.invoke(app, ["replace", str(merged), f"neck={new_head}", "-o", str(tmp_path / "x.onnx")])
    assert unknown.exit_code == 1 and "no part 'neck'" in unknown.output
