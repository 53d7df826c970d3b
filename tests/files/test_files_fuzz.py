"""Property and fuzz tests: random small models round-trip; mutated bytes only ever give typed errors."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import typer
from _files_models import make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from onnxstitch import _meta, files
from onnxstitch.cli import _StitchGroup
from onnxstitch.cli import inspect as inspect_cli
from onnxstitch.errors import StitchError
from onnxstitch.files.describe import describe

UNARY = ("Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Identity")
BINARY = ("Add", "Mul", "Sub", "Max")


@st.composite
def small_models(draw: st.DrawFn) -> onnx.ModelProto:
    """A random elementwise chain over x[batch, *dims], with random weights and part labels."""
    dims = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    n_nodes = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i in range(n_nodes):
        part = draw(st.sampled_from(["a", "b", None]))
        if draw(st.booleans()):
            op = draw(st.sampled_from(BINARY))
            weight = numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32), f"w{i}")
            inits.append(weight)
            node = helper.make_node(op, [current, weight.name], [f"t{i}"], name=f"n{i}")
        else:
            node = helper.make_node(draw(st.sampled_from(UNARY)), [current], [f"t{i}"], name=f"n{i}")
        if part:
            _meta.set_prop(node, _meta.PART, part)
        nodes.append(node)
        current = f"t{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "random",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", *dims])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", *dims])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(st.integers(13, 21)))])
    model.ir_version = 8
    return model


def _run(source: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=small_models(), external=st.booleans(), threshold=st.sampled_from([0, 16, 1024]))
def test_random_models_round_trip(tmp_path_factory: pytest.TempPathFactory, model: onnx.ModelProto,
                                  external: bool, threshold: int) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("rt")
    before = model.SerializeToString()
    target = files.save(
        model, folder / "m.onnx", external_data=external, size_threshold=threshold, manifest=True
    )
    assert model.SerializeToString() == before
    loaded = files.load(target, verify=True)
    assert loaded.SerializeToString() == before
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).standard_normal((2, *dims)).astype(np.float32)
    np.testing.assert_array_equal(_run(target, x), _run(model, x))
    summary = describe(loaded)
    assert summary["nodes"] == len(model.graph.node)
    assert summary["parameters"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    if summary["parts"]:
        assert sum(r["nodes"] for r in summary["parts"]) == summary["nodes"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_as_other_exceptions(tmp_path_factory: pytest.TempPathFactory,
                                                          data: bytes) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("bytes") / "x.onnx"
    path.write_bytes(data)
    with contextlib.suppress(StitchError):
        files.load(path)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    blob = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        pos = rng.randrange(len(blob)) if blob else 0
        if kind == 0 and blob:
            blob[pos] ^= 1 << rng.randrange(8)  # bit flip
        elif kind == 1:
            del blob[rng.randrange(len(blob) + 1) :]  # truncation
        elif kind == 2:
            blob[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))  # insertion
        elif kind == 3 and blob:
            del blob[pos : pos + rng.randint(1, 8)]  # deletion
        elif blob:
            blob[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x08, 0x12])  # interesting byte
    return bytes(blob)


def _seed_models(tmp_path: Path) -> list[tuple[Path, bytes]]:
    inline = files.save(make_model(n=4), tmp_path / "inline.onnx")
    external = files.save(make_model(n=16), tmp_path / "ext.onnx", external_data=True)
    return [(inline, inline.read_bytes()), (external, external.read_bytes())]


def test_mutated_onnx_bytes_give_typed_errors_or_models(tmp_path: Path) -> None:
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for path, original in _seed_models(tmp_path):
        for _ in range(300):
            path.write_bytes(_mutate(original, rng))
            try:
                model = files.load(path)
            except StitchError:
                outcomes["error"] += 1
            else:
                assert isinstance(model, onnx.ModelProto)
                outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes  # the fuzzer reaches both outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data", "inline.onnx"]


def test_mutated_files_through_the_inspect_cli(tmp_path: Path) -> None:
    app = typer.Typer(cls=_StitchGroup)

    @app.callback()
    def _root() -> None:
        """inspect only."""

    inspect_cli.register(app)
    rng = random.Random(99)
    runner = CliRunner()
    codes = set()
    for path, original in _seed_models(tmp_path):
        for _ in range(40):
            path.write_bytes(_mutate(original, rng))
            for extra in ([], ["--json"]):
                result = runner.invoke(app, ["inspect", str(path), *extra])
                assert result.exit_code in (0, 1), result.output
                assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
                codes.add(result.exit_code)
    assert codes == {0, 1}


def test_flipped_weight_bit_passes_checker_but_not_the_manifest(tmp_path: Path) -> None:
    target = files.save(make_model(), tmp_path / "m.onnx", manifest=True)
    blob = bytearray(target.read_bytes())
    w = make_model().graph.initializer[0].raw_data
    pos = bytes(blob).find(w) + 37
    blob[pos] ^= 0x10
    target.write_bytes(bytes(blob))
    model = files.load(target)  # parses, passes onnx.checker, and runs with a changed weight
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.initializer[0].raw_data != w
    x = np.ones((1, 16), np.float32)
    assert not np.array_equal(_run(model, x), _run(make_model(), x))
    with pytest.raises(StitchError, match=r"m\.onnx changed since the manifest"):
        files.load(target, verify=True)
