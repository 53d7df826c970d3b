"""deploy_kserve: the InferenceService manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import onnxstitch as ox
from onnxstitch.errors import DeployError


def test_manifest_fields(tmp_path: Path):
    out = tmp_path / "isvc.yaml"
    text = ox.deploy_kserve(
        "pvc://models/repo", out, name="hybrid", namespace="ml", min_replicas=2, max_replicas=5, gpus=1
    )
    assert out.read_text() == text
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert doc["kind"] == "InferenceService"
    assert doc["metadata"] == {"name": "hybrid", "namespace": "ml"}
    predictor = doc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "onnx"}
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == "pvc://models/repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_no_output_returns_text_only(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ox.deploy_kserve("s3://b/m", name="x")
    assert "InferenceService" in text
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_force(tmp_path: Path):
    out = tmp_path / "isvc.yaml"
    out.write_text("mine")
    with pytest.raises(DeployError, match="already exists"):
        ox.deploy_kserve("s3://b/m", out, name="x")
    assert out.read_text() == "mine"
    ox.deploy_kserve("s3://b/m", out, name="x", force=True)
    assert "InferenceService" in out.read_text()


def test_every_bad_option_reported_at_once(tmp_path: Path):
    with pytest.raises(DeployError) as info:
        ox.deploy_kserve(
            "/local/path", tmp_path / "o.yaml", name="Bad_Name", min_replicas=3, max_replicas=2, cpu="lots"
        )
    text = str(info.value)
    for part in ("name 'Bad_Name'", "storage URI '/local/path'", "replicas must satisfy", "cpu 'lots'"):
        assert part in text
    assert not (tmp_path / "o.yaml").exists()
