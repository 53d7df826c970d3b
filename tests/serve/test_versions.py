"""The Triton version flow under ``onnxstitch serve``: after ``deploy triton --version next`` the
server answers with the new version (Triton's default policy serves the newest only), and the old
version stays in the repository, loadable; a model deployed with an int8 variant as version 2
(``version_policy: { specific: ... }``) answers at both versions, as Triton does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from onnx import numpy_helper
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.errors import ServeError
from onnxstitch.runtime.serve import serve

from ._server import free_port, running


def _part(text: str, seed: int, shape: tuple[int, int]) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 18]>' + text)
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    return model


def _head(seed: int) -> onnx.ModelProto:
    return _part("h (float[batch, 3] x) => (float[batch, 2] logits) { logits = MatMul(x, w) }", seed, (3, 2))


@pytest.mark.slow
def test_serve_answers_with_the_next_version_and_the_old_one_stays_loadable(tmp_path: Path) -> None:
    backbone = _part(
        "b (float[batch, 4] image) => (float[batch, 3] f) { h = MatMul(image, w) \n f = Relu(h) }", 0, (4, 3)
    )
    hybrid = ox.chain({"backbone": backbone, "head": _head(1)})
    m1 = ox.save(hybrid, tmp_path / "m.onnx")
    head = ox.save(_head(2), tmp_path / "head_v2.onnx")
    m2 = tmp_path / "m2.onnx"
    repo = tmp_path / "models"
    runner = CliRunner()
    deploy = ["deploy", "triton", "--repository", str(repo), "--name", "hybrid", "--version", "next"]
    assert runner.invoke(app, [deploy[0], deploy[1], str(m1), *deploy[2:]]).exit_code == 0
    replaced = runner.invoke(app, ["replace", str(m1), f"head={head}", "-o", str(m2)])
    assert replaced.exit_code == 0, replaced.output
    rolled = runner.invoke(app, [deploy[0], deploy[1], str(m2), *deploy[2:]])
    assert rolled.exit_code == 0, rolled.output
    assert "changes against version 1" in rolled.output and "part head: weights" in rolled.output

    image = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    want_new = ox.Session(m2).run({"image": image})["logits"]
    want_old = ox.Session(m1).run({"image": image})["logits"]
    assert not np.allclose(want_new, want_old)
    with running(repo, tmp_path / "serve.log") as server:
        client = thttp.InferenceServerClient(server.url)
        tensor = thttp.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        result = client.infer("hybrid", [tensor])
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_allclose(result.as_numpy("logits"), want_new, rtol=1e-5, atol=1e-6)
        assert client.is_model_ready("hybrid", "2")
        assert not client.is_model_ready("hybrid", "1")  # Triton's default policy: the newest only
        with pytest.raises(InferenceServerException, match="version 1 not found"):
            client.infer("hybrid", [tensor], model_version="1")
    old = ox.Session(repo / "hybrid" / "1" / "model.onnx").run({"image": image})["logits"]
    np.testing.assert_allclose(old, want_old, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_serve_answers_the_model_and_its_int8_variant_at_their_versions(tmp_path: Path) -> None:
    """``deploy triton --variant int8=…`` writes the int8 twin as version 2 and a config serving
    versions 1 and 2: ``onnxstitch serve`` serves both, each answering as its own file does with
    its own version number (REST and gRPC); an unversioned request gets the newest, the int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _part(
        "m (float[batch, 16] image) => (float[batch, 8] logits) { logits = MatMul(image, w) }", 3, (16, 8)
    )
    fp32 = ox.save(model, tmp_path / "m.onnx")
    int8 = tmp_path / "m.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    repo = tmp_path / "models"
    args = [
        "deploy",
        "triton",
        str(fp32),
        "--repository",
        str(repo),
        "--name",
        "m",
        "--variant",
        f"int8={int8}",
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    image = np.random.default_rng(8).standard_normal((2, 16)).astype(np.float32)
    want = {"2": ox.Session(int8).run({"image": image})["logits"]}
    want["1"] = ox.Session(fp32).run({"image": image})["logits"]
    assert not np.array_equal(want["1"], want["2"])
    with running(repo, tmp_path / "serve.log") as server:
        client = thttp.InferenceServerClient(server.url)
        tensor = thttp.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        result = client.infer("m", [tensor])
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_array_equal(result.as_numpy("logits"), want["2"])
        grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
        grpc_tensor = tgrpc.InferInput("image", list(image.shape), "FP32")
        grpc_tensor.set_data_from_numpy(image)
        for version in ("1", "2"):
            assert client.is_model_ready("m", version) and grpc_client.is_model_ready("m", version)
            assert client.get_model_metadata("m", version)["versions"] == ["1", "2"]
            answer = client.infer("m", [tensor], model_version=version)
            assert answer.get_response()["model_version"] == version
            np.testing.assert_array_equal(answer.as_numpy("logits"), want[version])
            grpc_answer = grpc_client.infer("m", [grpc_tensor], model_version=version)
            assert grpc_answer.get_response().model_version == version
            np.testing.assert_array_equal(grpc_answer.as_numpy("logits"), want[version])
        assert grpc_client.infer("m", [grpc_tensor]).get_response().model_version == "2"
        assert client.get_model_config("m", "1") == client.get_model_config("m")
        with pytest.raises(InferenceServerException, match="version 3 not found"):
            client.get_model_config("m", "3")
        with pytest.raises(InferenceServerException, match="version 3 not found"):
            client.infer("m", [tensor], model_version="3")
        with pytest.raises(InferenceServerException, match="version 3 not found"):
            grpc_client.infer("m", [grpc_tensor], model_version="3")
    assert "versions 1, 2" in (tmp_path / "serve.log").read_text()


def test_serve_refuses_a_listed_version_without_its_folder(tmp_path: Path) -> None:
    """A config listing a version the repository lacks fails before any server starts, naming
    the model and the version (Triton would leave that version unavailable)."""
    model = _head(4)
    repo = tmp_path / "models"
    ox.deploy_triton(model, repo, name="m", variants={"int8": _head(5)})
    (repo / "m" / "2" / "model.onnx").unlink()
    (repo / "m" / "2").rmdir()
    with pytest.raises(ServeError, match=r"model 'm': version_policy lists version 2 but"):
        serve(repo, port=free_port(), grpc_port=free_port())
