"""``deploy_triton(variants=…)`` / ``deploy triton --variant int8=…``: a quantized model beside the
float32 one, as two versions of one Triton model or as two models (issue 13, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.errors import DeployError

RUNNER = CliRunner()


def _mlp(width: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, width)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The float32 MLP and its int8 twin (onnxruntime's dynamic quantization), as files."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("variants")
    fp32 = ox.save(_mlp(), folder / "m.onnx")
    int8 = folder / "m.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(int8)).graph.node)
    return {"fp32": fp32, "int8": int8, "other": ox.save(_mlp(width=10), folder / "other.onnx")}


def _config(path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt parsed with Triton's own ModelConfig message (comments included)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _check_runs(deployment: ox.runtime.deploy.triton.TritonDeployment, reference: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    want = ox.Session(reference, device="cpu").run({"x": x})["logits"]
    got = ox.Session(deployment.model_path, device="cpu").run({"x": x})["logits"]
    np.testing.assert_array_equal(got, want)


def test_variants_as_versions_share_one_config_that_serves_both(
    models: dict[str, Path], tmp_path: Path
) -> None:
    result = ox.deploy_triton(models["fp32"], tmp_path, name="mlp", variants={"int8": models["int8"]})
    int8 = result.variants["int8"]
    assert (result.version, int8.version, int8.name, int8.variant) == (1, 2, "mlp", "int8")
    assert int8.config_path == result.config_path and int8.config_text == result.config_text
    config = _config(result.config_path)
    assert config.name == "mlp" and list(config.version_policy.specific.versions) == [1, 2]
    assert "# version 1: the model; version 2: variant 'int8'" in result.config_text
    assert config.max_batch_size == 64 and [i.name for i in config.input] == ["x"]
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["1", "2", "config.pbtxt"]
    _check_runs(result, models["fp32"])
    _check_runs(int8, models["int8"])


def test_variants_as_models_get_a_config_each(models: dict[str, Path], tmp_path: Path) -> None:
    result = ox.deploy_triton(
        models["fp32"], tmp_path, name="mlp", variants={"int8": models["int8"]}, variants_as="models"
    )
    int8 = result.variants["int8"]
    assert (int8.name, int8.version) == ("mlp_int8", 1)
    main, variant = _config(result.config_path), _config(int8.config_path)
    assert (main.name, variant.name) == ("mlp", "mlp_int8")
    assert not main.HasField("version_policy") and not variant.HasField("version_policy")
    variant.name = main.name
    assert variant == main  # same signature -> the same config but for the name
    _check_runs(int8, models["int8"])


def test_a_variant_with_another_signature_is_refused_naming_it(
    models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(DeployError, match="variant 'other' does not have the model's signature") as info:
        ox.deploy_triton(
            models["fp32"], tmp_path, name="mlp", variants={"int8": models["int8"], "other": models["other"]}
        )
    message = str(info.value)
    assert "output 'logits': TYPE_FP32 ['batch', 16]" in message and "['batch', 10]" in message
    assert "'int8'" not in message.split("\n", 1)[1]  # the good variant is not listed
    assert not any(tmp_path.iterdir()), "nothing is written when a check fails"


def test_bad_variant_names_and_modes(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"variant name\(s\) 'in t8', '' cannot be used"):
        ox.deploy_triton(
            models["fp32"], tmp_path, name="mlp", variants={"in t8": models["int8"], "": models["int8"]}
        )
    with pytest.raises(DeployError, match="variants_as='copies' is not one of 'versions', 'models'"):
        ox.deploy_triton(
            models["fp32"], tmp_path, name="mlp", variants={"int8": models["int8"]}, variants_as="copies"
        )
    assert not any(tmp_path.iterdir())


def test_an_existing_variant_version_is_kept_without_force(models: dict[str, Path], tmp_path: Path) -> None:
    ox.deploy_triton(models["fp32"], tmp_path, name="mlp", version=2)
    before = (tmp_path / "mlp" / "2" / "model.onnx").read_bytes()
    with pytest.raises(DeployError, match="variant 'int8': version 2 of model 'mlp' already exists"):
        ox.deploy_triton(models["fp32"], tmp_path, name="mlp", variants={"int8": models["int8"]})
    assert not (tmp_path / "mlp" / "1").exists()
    assert (tmp_path / "mlp" / "2" / "model.onnx").read_bytes() == before
    # with --version next the pair goes after it; the shared config then serves the new pair only
    result = ox.deploy_triton(
        models["fp32"], tmp_path, name="mlp", version="next", variants={"int8": models["int8"]}, force=True
    )
    assert (result.version, result.variants["int8"].version) == (3, 4)
    assert list(_config(result.config_path).version_policy.specific.versions) == [3, 4]


def test_dry_run_lists_every_file_and_writes_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    result = ox.deploy_triton(
        models["fp32"], tmp_path / "repo", name="mlp", variants={"int8": models["int8"]}, dry_run=True
    )
    assert result.variants["int8"].files == [
        result.config_path,
        tmp_path / "repo" / "mlp" / "2" / "model.onnx",
    ]
    assert not (tmp_path / "repo").exists()


def test_cli_variant_round_trip(models: dict[str, Path], tmp_path: Path) -> None:
    args = ["deploy", "triton", str(models["fp32"]), "-r", str(tmp_path), "--name", "mlp", "--json"]
    done = RUNNER.invoke(app, [*args, "--variant", f"int8={models['int8']}"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["variants"]["int8"]["version"] == 2 and "specific" in summary["config"]
    done = RUNNER.invoke(
        app, [*args, "--variant", f"int8={models['int8']}", "--variants-as", "models", "--force"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["variants"]["int8"]["name"] == "mlp_int8"
    assert _config(tmp_path / "mlp_int8" / "config.pbtxt").name == "mlp_int8"
    text = RUNNER.invoke(app, [*args[:-1], "--variant", f"int8={models['int8']}", "--force"])
    assert text.exit_code == 0 and "variant 'int8' as Triton model 'mlp' version 2" in text.output


@pytest.mark.parametrize(
    ("variant", "message"),
    [("int8", "is not NAME=MODEL.onnx"), ("int8=/no/such.onnx", "is not a file")],
)
def test_cli_bad_variant_is_a_usage_error(
    models: dict[str, Path], tmp_path: Path, variant: str, message: str
) -> None:
    done = RUNNER.invoke(
        app,
        ["deploy", "triton", str(models["fp32"]), "-r", str(tmp_path), "--name", "mlp", "--variant", variant],
    )
    assert done.exit_code == 2 and message in " ".join(done.output.split())


def test_cli_other_signature_exit_1_no_traceback(models: dict[str, Path], tmp_path: Path) -> None:
    done = RUNNER.invoke(
        app,
        [
            "deploy",
            "triton",
            str(models["fp32"]),
            "-r",
            str(tmp_path),
            "--name",
            "mlp",
            "--variant",
            f"x={models['other']}",
        ],
    )
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "variant 'x' does not have the model's signature" in " ".join(done.output.split())
