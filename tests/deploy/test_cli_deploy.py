"""`onnxstitch deploy triton|kserve` through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app

runner = CliRunner()


def _model_file(tmp_path: Path, model: onnx.ModelProto) -> Path:
    path = tmp_path / "m.onnx"
    ox.save(model, path)
    return path


def test_deploy_triton_writes_repository(tmp_path: Path, batched):
    path = _model_file(tmp_path, batched)
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "deploy",
            "triton",
            str(path),
            "--repository",
            str(repo),
            "--name",
            "hybrid",
            "--max-batch-size",
            "8",
            "--instances",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = text_format.Parse((repo / "hybrid" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.max_batch_size == 8
    assert cfg.instance_group[0].count == 2
    assert (repo / "hybrid" / "1" / "model.onnx").is_file()


def test_deploy_triton_dry_run_json(tmp_path: Path, batched):
    path = _model_file(tmp_path, batched)
    result = runner.invoke(
        app,
        ["deploy", "triton", str(path), "-r", str(tmp_path / "repo"), "--name", "m", "--dry-run", "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True
    assert summary["max_batch_size"] == 64
    assert 'backend: "onnxruntime"' in summary["config"]
    assert not (tmp_path / "repo").exists()


def test_deploy_triton_error_exit_1_no_traceback(tmp_path: Path, batched):
    path = _model_file(tmp_path, batched)
    args = ["deploy", "triton", str(path), "-r", str(tmp_path / "repo"), "--name", "m"]
    assert runner.invoke(app, args).exit_code == 0
    again = subprocess.run(["onnxstitch", *args], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_deploy_triton_usage_error_exit_2(tmp_path: Path, batched):
    path = _model_file(tmp_path, batched)
    result = runner.invoke(app, ["deploy", "triton", str(path), "--name", "m"])  # no --repository
    assert result.exit_code == 2


def test_deploy_kserve_stdout_and_file(tmp_path: Path):
    result = runner.invoke(
        app, ["deploy", "kserve", "s3://b/repo", "--name", "hybrid", "--max-replicas", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "maxReplicas: 3" in result.stdout
    out = tmp_path / "isvc.yaml"
    result = runner.invoke(app, ["deploy", "kserve", "s3://b/repo", "--name", "hybrid", "-o", str(out)])
    assert result.exit_code == 0
    assert "storageUri: s3://b/repo" in out.read_text()
