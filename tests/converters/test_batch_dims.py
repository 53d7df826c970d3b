"""Batch dims proven, not assumed (issue 10 item 4): a converted model whose second input is not
batch-major (an attention memory) must not claim it as the batch, nor be batched by Triton.

Each model is converted once per module; the proof runs the native model at dim-0 sizes that differ
per input (``onnxstitch.converters._batch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.errors import DeployError
from onnxstitch.runtime.deploy.triton import triton_config

torch = pytest.importorskip("torch")


class Attend(torch.nn.Module):
    """Queries ``x`` (batch-major) attend over a ``memory`` table whose rows are not the batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.q(x) @ memory.T, dim=-1) @ memory


def shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in v.type.tensor_type.shape.dim
        ]
        for v in [*model.graph.input, *model.graph.output]
    }


def config(model: onnx.ModelProto) -> mc.ModelConfig:
    return text_format.Parse(triton_config(model, name="m")[0], mc.ModelConfig())


@pytest.fixture(scope="module")
def attend_onnx() -> onnx.ModelProto:
    return ox.from_torch(Attend(), (torch.randn(2, 8), torch.randn(6, 8)))


def test_torch_memory_input_is_not_the_batch(attend_onnx: onnx.ModelProto) -> None:
    assert shapes(attend_onnx) == {"x": ["batch", 8], "memory": ["memory_dim0", 8], "output": ["batch", 8]}


def test_torch_memory_model_runs_with_a_memory_of_any_length(attend_onnx: onnx.ModelProto) -> None:
    rng = np.random.default_rng(0)
    x, memory = rng.standard_normal((3, 8), np.float32), rng.standard_normal((11, 8), np.float32)
    session = ort.InferenceSession(attend_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x, "memory": memory})[0]
    with torch.no_grad():
        want = Attend()(torch.from_numpy(x), torch.from_numpy(memory)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_triton_does_not_batch_a_memory_input(attend_onnx: onnx.ModelProto) -> None:
    """Before: max_batch_size 64 with dynamic batching, so Triton split the memory across requests."""
    cfg = config(attend_onnx)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert {i.name: list(i.dims) for i in cfg.input} == {"x": [-1, 8], "memory": [-1, 8]}
    with pytest.raises(DeployError, match=r"input 'memory' has dim 0 'memory_dim0', not the batch dim"):
        triton_config(attend_onnx, name="m", max_batch_size=8)


def test_memory_stays_apart_through_a_merge(attend_onnx: onnx.ModelProto) -> None:
    head = ox.from_torch(torch.nn.Linear(8, 3), torch.randn(2, 8))
    merged = ox.merge({"attend": attend_onnx, "head": head}, links=["attend:output->head:input"])
    assert shapes(merged) == {"x": ["batch", 8], "memory": ["memory_dim0", 8], "output": ["batch", 3]}
    assert config(merged).max_batch_size == 0


def test_inspect_says_why_batching_is_off(attend_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    from onnxstitch.cli import app

    path = tmp_path / "attend.onnx"
    ox.save(attend_onnx, path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "batching off: dim 0 is 'batch' elsewhere, but input 'memory' has dim 0 'memory_dim0'" in flat


@pytest.mark.parametrize("shared", [False, True], ids=["own-dims", "one-dim"])
def test_torch_program_memory_is_the_batch_only_when_the_program_ties_it(
    tmp_path: Path, shared: bool
) -> None:
    """A .pt2 whose memory has a Dim of its own keeps it apart; one Dim for both ties them (its guard)."""
    batch = torch.export.Dim("b")
    rows = batch if shared else torch.export.Dim("m")
    examples = (torch.randn(2, 8), torch.randn(2 if shared else 6, 8))
    program = torch.export.export(Attend(), examples, dynamic_shapes=({0: batch}, {0: rows}))
    torch.export.save(program, tmp_path / "attend.pt2")
    model = ox.from_torch(tmp_path / "attend.pt2", trusted=True)
    assert shapes(model)["memory"] == (["batch", 8] if shared else ["memory_dim0", 8])
    assert config(model).max_batch_size == (64 if shared else 0)


def test_deploy_triton_says_why_batching_is_off(attend_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    from onnxstitch.cli import app

    path = tmp_path / "attend.onnx"
    ox.save(attend_onnx, path)
    result = CliRunner().invoke(
        app, ["deploy", "triton", str(path), "-r", str(tmp_path / "repo"), "--name", "a"]
    )
    assert result.exit_code == 0, result.output
    assert "dynamic batching off: dim 0 is 'batch' elsewhere, but input 'memory'" in " ".join(
        result.output.split()
    )
    assert ox.deploy_triton(attend_onnx, tmp_path / "r2", name="a", dry_run=True).batching_off.startswith(
        "dim 0"
    )


def test_torch_batch_major_inputs_stay_one_batch() -> None:
    """The control: two batch-major inputs (tied by an add) keep one ``batch`` and Triton batches."""

    class Sum(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + 2 * b

    model = ox.from_torch(Sum(), (torch.randn(2, 4), torch.randn(2, 4)))
    assert shapes(model) == {"a": ["batch", 4], "b": ["batch", 4], "output": ["batch", 4]}
    assert config(model).max_batch_size == 64


def test_proof_from_runs_at_sizes_that_differ_per_input() -> None:
    from onnxstitch.converters import _batch

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        x, memory, y = arrays
        return [x @ memory.T @ memory, np.concatenate([x, y], axis=1), memory.sum(0)]

    examples = [np.ones((1, 4)), np.ones((5, 4)), np.ones((1, 2))]
    proof = _batch.prove_batch(run, examples, what="test")
    assert proof == _batch.BatchProof(inputs=frozenset({0, 2}), outputs=frozenset({0, 1}))
    assert _batch.prove_batch(lambda a: [a[0].sum(0)], [np.ones((2, 3))], what="test") is None
    # a static dim 0 (a fixed 4 x 4 table) is never resized nor claimed
    fixed = _batch.prove_batch(lambda a: [a[0] @ a[1]], [np.ones((1, 4)), np.eye(4)], what="test", fixed=[1])
    assert fixed == _batch.BatchProof(inputs=frozenset({0}), outputs=frozenset({0}))


# ------------------------------------------------------------------------------------------ Keras
@pytest.fixture(scope="module")
def keras_attend() -> Any:
    keras = pytest.importorskip("keras")
    x = keras.Input((8,), name="x")
    memory = keras.Input((8,), name="memory")
    query = keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=0))(x)
    scores = keras.layers.Softmax()(keras.ops.matmul(query, keras.ops.transpose(memory)))
    out = keras.layers.Identity(name="attended")(keras.ops.matmul(scores, memory))
    return keras.Model([x, memory], out)


@pytest.mark.filterwarnings("ignore:You are using a softmax")
def test_keras_memory_input_is_not_the_batch(keras_attend: Any) -> None:
    model = ox.from_keras(keras_attend)
    assert shapes(model) == {"x": ["batch", 8], "memory": ["memory_dim0", 8], "attended": ["batch", 8]}
    assert config(model).max_batch_size == 0
    rng = np.random.default_rng(1)
    x, memory = rng.standard_normal((2, 8), np.float32), rng.standard_normal((7, 8), np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x, "memory": memory})[0]
    np.testing.assert_allclose(got, np.asarray(keras_attend([x, memory])), rtol=1e-4, atol=1e-5)
