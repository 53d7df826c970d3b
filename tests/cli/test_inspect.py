"""`onnxstitch inspect` through typer's CliRunner on the real app, and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from onnxstitch import _meta, files
from onnxstitch.cli import _StitchGroup
from onnxstitch.cli import inspect as inspect_cli


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The real `inspect` command under the real error handling of the onnxstitch app."""
    application = typer.Typer(cls=_StitchGroup)

    @application.callback()
    def _root() -> None:
        """onnxstitch (inspect only)."""

    inspect_cli.register(application)
    return application


def _flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "a/w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "b/fc")
    nodes = [
        helper.make_node("Conv", ["image", "a/w"], ["a/f"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a/f"], ["a/g"]),
        helper.make_node("Flatten", ["a/g"], ["a/p"]),
        helper.make_node("MatMul", ["a/p", "b/fc"], ["logits"]),
    ]
    for node, part in zip(nodes, "aaab", strict=True):
        _meta.set_prop(node, _meta.PART, part)
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 2])],
        [w, fc],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    _meta.set_prop(m, _meta.SOURCE, "merged")
    _meta.set_prop(m, _meta.PARTS, '["a", "b"]')
    _meta.set_layout(m, "image", "NCHW")
    return m


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return files.save(_model(), tmp_path / "hybrid.onnx", manifest=True)


def test_human_output(app: typer.Typer, model_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(model_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "IR         10    opsets: ai.onnx 18" in out
    assert "source     merged" in out
    assert "4 nodes, 116 parameters" in out
    assert "image" in out and "['batch', 3, 8, 8]" not in out and "[batch, 3, 8, 8]" in out and "NCHW" in out
    assert "parts (provenance)" in out and "Conv×1, Flatten×1, GlobalAveragePool×1" in out


def test_json_output_has_stable_keys(app: typer.Typer, model_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(model_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data) == [
        "file", "ir_version", "opsets", "producer", "source", "inputs", "outputs", "batching", "nodes",
        "op_types", "parameters", "parameter_bytes", "layouts", "parts", "precision", "metadata",
    "graph",
    ]  # fmt: skip
    assert data["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, 8, 8], "layout": "NCHW"}
    ]
    assert [(p["part"], p["nodes"], p["parameters"]) for p in data["parts"]] == [("a", 3, 108), ("b", 1, 8)]


def test_sandbox_flag(app: typer.Typer, model_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(model_path), "--json", "--sandbox", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["session"]["inputs"] == ["image"]
    human = CliRunner().invoke(app, ["inspect", str(model_path), "--sandbox", "--memory-mb", "1024"])
    assert human.exit_code == 0 and "onnxruntime session created (CPUExecutionProvider)" in human.output


def test_verify_flag(app: typer.Typer, model_path: Path) -> None:
    assert CliRunner().invoke(app, ["inspect", str(model_path), "--verify"]).exit_code == 0
    blob = bytearray(model_path.read_bytes())
    blob[-30] ^= 0x04
    model_path.write_bytes(bytes(blob))
    result = CliRunner().invoke(app, ["inspect", str(model_path), "--verify"])
    assert result.exit_code == 1
    assert "hybrid.onnx changed since the manifest" in _flat(result.output)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\x80\x04K\x01.", "pickle"), (b"PK\x03\x04....", "zip archive")],
)
def test_bad_files_exit_1_without_traceback(
    app: typer.Typer, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    for extra in ([], ["--sandbox"]):
        result = CliRunner().invoke(app, ["inspect", str(bad), *extra])
        assert result.exit_code == 1
        assert message in _flat(result.output) and "Traceback" not in result.output


def test_missing_file_and_usage_errors(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1 and "nope.onnx' does not exist" in _flat(result.output)
    assert CliRunner().invoke(app, ["inspect"]).exit_code == 2
    assert CliRunner().invoke(app, ["inspect", "x.onnx", "--timeout", "0"]).exit_code == 2


def test_real_console_script(model_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onnxstitch", "inspect", str(model_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == "merged"
