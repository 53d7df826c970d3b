"""The artefacts we write, checked by the real consumers: the Triton core and the KServe SDK.

Both live in a separate virtualenv (``make deploy-env`` → ``.venv-deploy``; PyTriton needs numpy<2).
Without it these tests skip, unless ``ONNXSTITCH_REQUIRE_DEPLOY_ENV=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import onnxstitch as ox

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv-deploy" / "bin" / "python"


def _require_env() -> None:
    if not VENV_PY.exists():
        if os.environ.get("ONNXSTITCH_REQUIRE_DEPLOY_ENV") == "1":
            pytest.fail("ONNXSTITCH_REQUIRE_DEPLOY_ENV=1 but .venv-deploy is missing: run `make deploy-env`")
        pytest.skip("no .venv-deploy: run `make deploy-env` for the real Triton core and KServe SDK checks")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.serve
@pytest.mark.timeout(300)
def test_real_triton_core_serves_the_repository_we_write(tmp_path: Path):
    _require_env()
    triton_check = _script("triton_check")
    model_path = tmp_path / "model.onnx"
    ox.save(triton_check.demo_model(), model_path)
    summary = triton_check.check(model_path, ROOT / ".venv-deploy")
    assert summary["ok"] is True
    assert summary["config_max_batch_size"] == 64
    assert summary["max_abs_error"] <= 1e-6
    # every request reached the model, and Triton's dynamic batcher grouped concurrent ones: fewer
    # model executions than requests
    assert summary["server_requests"] == summary["requests"]
    assert summary["batcher_formed_batches"] is True, summary
    assert summary["server_executions"] < summary["requests"]


@pytest.mark.serve
@pytest.mark.timeout(300)
def test_real_triton_core_serves_an_int8_variant_as_version_2(tmp_path: Path):
    """``deploy_triton(variants={"int8": …})``: both versions ready, each answers as its own file."""
    _require_env()
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            feeds = [{"x": rng.standard_normal((4, 4), dtype=np.float32), "k": np.ones((4, 2), np.int64)}]
            self.feeds = iter(feeds * 4)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    triton_check = _script("triton_check")
    model = triton_check.demo_model()
    constant = next(n for n in model.graph.node if n.output[0] == "w")  # the quantizer takes initializers
    weight = onnx.numpy_helper.to_array(constant.attribute[0].t)
    model.graph.node.remove(constant)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    fp32 = ox.save(model, tmp_path / "model.onnx")
    int8 = tmp_path / "model.int8.onnx"
    # static: fixed activation scales, so a batch Triton forms gives each request what it gets alone
    # (dynamic quantization scales each batch as a whole: its answers depend on the batch-mates)
    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node)
    summary = triton_check.check(fp32, ROOT / ".venv-deploy", variants={"int8": int8})
    assert summary["ok"] is True and summary["versions_served"] == [1, 2]
    assert summary["max_abs_error"] <= 1e-5


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, {"runtime": "kserve-tritonserver", "min_replicas": 1, "max_replicas": 1}),
        ({"min_replicas": 0, "max_replicas": 8, "gpus": 1, "runtime": None}, {"runtime": None}),
    ],
)
def test_kserve_sdk_accepts_the_manifest(tmp_path: Path, args: dict, expected: dict):
    _require_env()
    out = tmp_path / "isvc.yaml"
    ox.deploy_kserve("s3://models/repository", out, name="hybrid", **args)
    proc = subprocess.run(
        [str(VENV_PY), str(ROOT / "scripts" / "kserve_check.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "V1beta1InferenceService"
    assert summary["model_format"] == "onnx"
    assert summary["protocol_version"] == "v2"
    assert summary["storage_uri"] == "s3://models/repository"
    assert summary["every_field_kept"] is True
    for key, value in expected.items():
        assert summary[key] == value


def test_kserve_check_fails_on_a_field_the_sdk_does_not_know(tmp_path: Path):
    _require_env()
    out = tmp_path / "isvc.yaml"
    text = ox.deploy_kserve("s3://m/r", name="hybrid").replace("minReplicas", "minReplica")
    out.write_text(text)
    proc = subprocess.run(
        [str(VENV_PY), str(ROOT / "scripts" / "kserve_check.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["every_field_kept"] is False
