"""``deploy_triton(version="next")`` / ``onnxstitch deploy triton --version next``: a retrained part
goes beside the old version, with the diff printed, and a signature that breaks the shared config
is refused unless forced."""

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
from onnxstitch.errors import DeployError
from onnxstitch.runtime.deploy.triton import latest_version

RUNNER = CliRunner()


def _part(text: str, seed: int, shape: tuple[int, int]) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 18]>' + text)
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    return model


def _head(seed: int, width: int = 2) -> onnx.ModelProto:
    text = f"h (float[batch, 3] x) => (float[batch, {width}] logits) {{ logits = MatMul(x, w) }}"
    return _part(text, seed, (3, width))


@pytest.fixture(scope="module")
def hybrid() -> onnx.ModelProto:
    backbone = _part(
        "b (float[batch, 4] image) => (float[batch, 3] f) { h = MatMul(image, w) \n f = Relu(h) }", 0, (4, 3)
    )
    return ox.chain({"backbone": backbone, "head": _head(1)})


def test_next_version_goes_beside_the_old_one(hybrid: onnx.ModelProto, tmp_path: Path) -> None:
    assert latest_version(tmp_path, "hybrid") is None
    first = ox.deploy_triton(hybrid, tmp_path, name="hybrid", version="next")
    assert first.version == 1 and first.previous is None
    v1_bytes = first.model_path.read_bytes()
    config = first.config_path.read_text()
    second = ox.deploy_triton(ox.replace(hybrid, "head", _head(2)), tmp_path, name="hybrid", version="next")
    assert second.version == 2 and second.previous == first.model_path
    assert latest_version(tmp_path, "hybrid") == 2
    assert first.model_path.read_bytes() == v1_bytes and first.config_path.read_text() == config
    assert ox.diff(second.previous, second.model_path).changed_parts == ["head"]
    with pytest.raises(DeployError, match="positive integer or 'next'"):
        ox.deploy_triton(hybrid, tmp_path, name="hybrid", version="latest")


def test_a_signature_that_breaks_the_deployed_config_is_refused_unless_forced(
    hybrid: onnx.ModelProto, tmp_path: Path
) -> None:
    ox.deploy_triton(hybrid, tmp_path, name="hybrid", version="next")
    wider = ox.replace(hybrid, "head", _head(2, width=5))
    with pytest.raises(DeployError, match=r"config\.pbtxt that differs") as info:
        ox.deploy_triton(wider, tmp_path, name="hybrid", version="next")
    assert "dims: [ 5 ]" in str(info.value) and "--force" in (info.value.hint or "")
    assert not (tmp_path / "hybrid" / "2").exists()  # nothing written
    forced = ox.deploy_triton(wider, tmp_path, name="hybrid", version="next", force=True)
    assert forced.version == 2 and "dims: [ 5 ]" in forced.config_path.read_text()


def test_cli_version_next_prints_the_diff(hybrid: onnx.ModelProto, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    old = ox.save(hybrid, tmp_path / "m.onnx")
    new = ox.save(ox.replace(hybrid, "head", _head(3)), tmp_path / "m2.onnx")
    args = ["deploy", "triton", "--repository", str(repo), "--name", "hybrid", "--version", "next"]
    first = RUNNER.invoke(app, [*args[:2], str(old), *args[2:]])
    assert first.exit_code == 0, first.output
    assert "version 1" in first.output and "changes against" not in first.output
    second = RUNNER.invoke(app, [*args[:2], str(new), *args[2:]])
    assert second.exit_code == 0, second.output
    assert "version 2" in second.output and "changes against version 1" in second.output
    assert "part head: weights" in second.output and "part backbone: identical" in second.output
    again = RUNNER.invoke(app, [*args[:2], str(new), *args[2:], "--json", "--dry-run"])
    data = json.loads(again.output)
    assert data["version"] == 3 and data["diff"]["identical"] is True
    bad = RUNNER.invoke(app, [*args[:2], str(new), *args[2:6], "--version", "soon"])
    assert bad.exit_code == 2
