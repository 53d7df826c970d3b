"""``onnxstitch convert torch|keras|tensorflow`` end to end (CliRunner, and once the real console script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxstitch import _meta
from onnxstitch.cli import app
from onnxstitch.cli.convert import parse_dynamic, parse_layouts, parse_tensor_spec
from onnxstitch.converters._common import value_dims
from onnxstitch.errors import StitchError

runner = CliRunner()

FACTORY = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, image, extra):
        return self.conv(image).mean((2, 3)) + extra


def build():
    torch.manual_seed(0)
    return Net()


instance = build()
not_a_module = 42


def broken():
    raise RuntimeError("no weights here")
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd holding a uniquely named factory module (so imports do not collide between tests)."""
    name = f"factory_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / name


def _dims(model: onnx.ModelProto) -> dict[str, list[Any]]:
    return {v.name: value_dims(v) for v in [*model.graph.input, *model.graph.output]}


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _err(result: Any) -> str:
    """stderr with the console's line wrapping undone."""
    return " ".join(result.stderr.split())


# ------------------------------------------------------------------------------------------ torch
def test_convert_torch_writes_model_and_summary(workdir: Path) -> None:
    out = workdir.parent / "net.onnx"
    result = _invoke(
        "convert",
        "torch",
        f"{workdir.name}:build",
        "-e",
        "image=1x3x8x8:float32",
        "-e",
        "extra=1x4",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert _dims(model) == {"image": ["batch", 3, 8, 8], "extra": ["batch", 4], "output": ["batch", 4]}
    assert _meta.get_layouts(model) == {"image": "NCHW"} and _meta.get_source(model) == "torch"
    assert "parameters: 112" in result.stdout
    assert "parity: ✓ matches the native model at batch 1, 7" in result.stdout
    assert "image: float32[batch, 3, 8, 8] NCHW" in result.stdout
    assert sorted(p.name for p in workdir.parent.iterdir() if p.suffix != ".py") == ["net.onnx"]


def test_convert_torch_options_and_json(workdir: Path) -> None:
    out = workdir.parent / "net.onnx"
    result = _invoke(
        "convert",
        "torch",
        f"{workdir.name}:instance",  # a module object, not a factory
        "-e",
        "2x3x8x8",
        "-e",
        "2x4:float32",
        "--dynamic",
        "image:0=n",
        "--dynamic",
        "extra:0=n",
        "--output-name",
        "score",
        "--layout",
        "image=NHWC",
        "--no-validate",
        "--json",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["n", 3, 8, 8]},
        {"name": "extra", "dtype": "float32", "shape": ["n", 4]},
    ]
    assert info["outputs"] == [{"name": "score", "dtype": "float32", "shape": ["n", 4]}]
    assert info["layouts"] == {"image": "NHWC"} and info["validated"] is False and info["parameters"] == 112
    assert _dims(onnx.load(str(out)))["score"] == ["n", 4]


def test_convert_torch_static_opset_input_names(workdir: Path) -> None:
    out = workdir.parent / "net.onnx"
    result = _invoke(
        "convert",
        "torch",
        f"{workdir.name}:build",
        "-e",
        "3x3x8x8",
        "-e",
        "3x4",
        "--static",
        "--opset",
        "18",
        "--input-name",
        "pixels",
        "--input-name",
        "side",
        "--rtol",
        "1e-5",
        "--atol",
        "1e-6",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert _dims(model) == {"pixels": [3, 3, 8, 8], "side": [3, 4], "output": [3, 4]}
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert "at batch 3 (rtol=1e-05, atol=1e-06)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "image=1x3x8x8:nope", "-e", "extra=1x4"], "needs static dims and a torch dtype"),
        (["-e", "image=1xAx8", "-e", "extra=1x4"], "is not of the form [name=]DIMxDIM...[:dtype]"),
        (["-e", "image=1x3x8x8", "-e", "1x4"], "name every input or none"),
        (["-e", "1x3x8x8", "-e", "1x4", "--static", "--dynamic", "image:0=n"], "exclude each other"),
        (["-e", "1x3x8x8", "-e", "1x4", "--dynamic", "image0=n"], "input:axis=symbol"),
        (["-e", "1x3x8x8", "-e", "1x4", "--layout", "image=CHW"], "tensor=NCHW|NHWC"),
        (["-e", "1x3x8x8", "-e", "1x4", "--dynamic", "nope:0=n"], "'nope' is not an input"),
    ],
)
def test_convert_torch_bad_options_exit_1(workdir: Path, args: list[str], message: str) -> None:
    result = _invoke("convert", "torch", f"{workdir.name}:build", *args, "-o", "x.onnx")
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and message in _err(result)
    assert "Traceback" not in result.output
    assert not (workdir.parent / "x.onnx").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["-e", "1x4x8x8", "-e", "1x4"],  # wrong channels
        ["-e", "1x3x8x8:float16", "-e", "1x4"],  # wrong dtype
        ["-e", "1x3x8x8"],  # forward's second argument missing
    ],
)
def test_convert_torch_examples_the_module_fails_on(workdir: Path, args: list[str]) -> None:
    result = _invoke("convert", "torch", f"{workdir.name}:build", *args, "-o", "x.onnx")
    assert result.exit_code == 1, result.output
    err = _err(result)
    assert "torch module Net: the module fails on the example inputs: " in err
    assert (
        "fix: check the example input shapes/dtypes (-e) and the number of inputs forward takes "
        "(2: image, extra)" in err
    )
    assert "dynamic_dims" not in err and "Traceback" not in result.output


def test_convert_torch_without_examples_names_the_option(workdir: Path) -> None:
    result = _invoke("convert", "torch", f"{workdir.name}:build", "-o", "x.onnx")
    assert result.exit_code == 1, result.output
    err = _err(result)
    assert "--example-input (-e) is needed" in err and "e.g. -e 1x3x224x224" in err
    assert "from_torch(" not in err


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("not_a_module", "neither an nn.Module nor a callable"),
        ("broken", "calling the factory"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_convert_torch_bad_factory_exit_1(workdir: Path, attr: str, message: str) -> None:
    result = _invoke("convert", "torch", f"{workdir.name}:{attr}", "-e", "1x3x8x8", "-o", "x.onnx")
    assert result.exit_code == 1 and message in _err(result), result.output


def test_convert_torch_pt2_needs_trusted(tmp_path: Path) -> None:
    pt2 = tmp_path / "m.pt2"
    pt2.write_bytes(b"PK")  # never opened without --trusted
    result = _invoke("convert", "torch", str(pt2), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 1 and "--trusted" in _err(result) and "run arbitrary code" in _err(result)


def test_convert_torch_pt2_with_trusted(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    program = torch.export.export(
        torch.nn.Linear(4, 2), (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("n")},)
    )
    torch.export.save(program, str(tmp_path / "lin.pt2"))
    out = tmp_path / "lin.onnx"
    result = _invoke("convert", "torch", str(tmp_path / "lin.pt2"), "--trusted", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert _dims(onnx.load(str(out))) == {"input": ["batch", 4], "output": ["batch", 2]}
    assert "parity: ✓" in result.stdout


def test_convert_usage_error_exit_2(workdir: Path) -> None:
    assert _invoke("convert", "torch", f"{workdir.name}:build").exit_code == 2  # no -o
    assert _invoke("convert", "pytorch", "x", "-o", "y.onnx").exit_code == 2  # no such source


def test_real_console_script(workdir: Path) -> None:
    exe = shutil.which("onnxstitch")
    command = [exe] if exe else [sys.executable, "-m", "onnxstitch"]
    out = workdir.parent / "cli.onnx"
    proc = subprocess.run(
        [*command, "convert", "torch", f"{workdir.name}:build", "-e", "1x3x8x8", "-e", "1x4", "-o", str(out)],
        cwd=workdir.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity: ✓" in proc.stdout
    assert [v.name for v in onnx.load(str(out)).graph.output] == ["output"]


# ------------------------------------------------------------------------------------ keras / tf
@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="probs")(x))
    folder = tmp_path_factory.mktemp("keras")
    model.save(folder / "dense.keras")
    model.export(str(folder / "saved"), verbose=False)
    sequential = keras.Sequential([keras.layers.Dense(2, name="dense")])  # no Input: no input names
    sequential.build((None, 5))
    sequential.save(folder / "seq.keras")
    return folder


def test_convert_keras_file(keras_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "dense.onnx"
    result = _invoke("convert", "keras", str(keras_files / "dense.keras"), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert _dims(onnx.load(str(out))) == {"x": ["batch", 4], "probs": ["batch", 3]}
    assert "parity: ✓" in result.stdout


def test_convert_keras_console_script_keeps_tensorflow_quiet(keras_files: Path, tmp_path: Path) -> None:
    """TensorFlow's absl/oneDNN start-up lines (written to fd 2 at import) stay off the terminal."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = tmp_path / "dense.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxstitch",
            "convert",
            "keras",
            str(keras_files / "dense.keras"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity: ✓" in proc.stdout
    for noise in ("oneDNN", "absl", "cpu_feature_guard", "Starting new session"):
        assert noise not in proc.stderr, proc.stderr[-2000:]


def test_tensorflow_log_level_set_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxstitch.cli.convert import import_tensorflow_quietly

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if already imported: nothing to do
    import_tensorflow_quietly()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's choice stays
    import_tensorflow_quietly()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_convert_keras_with_signature_and_json(keras_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "seq.onnx"
    result = _invoke(
        "convert", "keras", str(keras_files / "seq.keras"), "-s", "feats=Nx5:float32", "--opset", "17",
        "--json", "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["inputs"] == [{"name": "feats", "dtype": "float32", "shape": ["batch", 5]}]
    assert info["opset"]["ai.onnx"] == 17 and info["validated"] is True


def test_convert_tensorflow_saved_model(keras_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "saved.onnx"
    result = _invoke(
        "convert", "tensorflow", str(keras_files / "saved"), "--layout", "x=NHWC", "-o", str(out)
    )
    assert result.exit_code == 1 and "rank 2" in _err(result)  # a layout needs a rank-4 tensor
    result = _invoke("convert", "tensorflow", str(keras_files / "saved"), "-o", str(out))
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert [v.name for v in model.graph.input] == ["x"] and value_dims(model.graph.output[0]) == ["batch", 3]
    assert _meta.get_source(model) == "keras"


def test_convert_tensorflow_trusted_flag(tmp_path: Path) -> None:
    """A SavedModel with a file-writing op is refused, unless --trusted; the op never runs."""
    pytest.importorskip("tensorflow")
    from keras_models import file_writing_saved_model

    saved, marker = file_writing_saved_model(tmp_path)
    out = tmp_path / "w.onnx"
    refused = _invoke("convert", "tensorflow", str(saved), "-o", str(out))
    assert refused.exit_code == 1 and "WriteFile" in _err(refused)
    assert not out.exists()
    done = _invoke("convert", "tensorflow", str(saved), "--trusted", "--no-validate", "-o", str(out))
    assert done.exit_code == 0, done.output
    assert out.exists() and not marker.exists()


# ------------------------------------------------------------------------------------------ parsing
def test_parsers() -> None:
    assert parse_tensor_spec("image=1x3x224x224:float16", option="-e") == (
        "image",
        [1, 3, 224, 224],
        "float16",
    )
    assert parse_tensor_spec("Nx4", option="-s") == (None, [None, 4], "float32")
    assert parse_tensor_spec("t=?x7:int64", option="-s") == ("t", [None, 7], "int64")
    assert parse_dynamic(["a:0=batch", "a:-1=seq", "b:0=batch"]) == {
        "a": {0: "batch", -1: "seq"},
        "b": {0: "batch"},
    }
    assert parse_layouts(["x=NCHW", "y=NHWC"]) == {"x": "NCHW", "y": "NHWC"} and parse_layouts(None) is None
    for bad in ("", "x=", "x=1x:float32", "x=1x2:float:32"):
        with pytest.raises(StitchError):
            parse_tensor_spec(bad, option="-e")
    np.testing.assert_equal(parse_tensor_spec("1", option="-e")[1], [1])


def test_example_tensors_and_signatures() -> None:
    import torch

    from onnxstitch.cli.convert import _example_tensors, _signature

    named = _example_tensors(["ids=2x5:int64", "w=2x5:float16"])
    assert list(named) == ["ids", "w"]
    assert named["ids"].dtype == torch.int64 and not named["ids"].any()
    assert named["w"].dtype == torch.float16 and tuple(named["w"].shape) == (2, 5)
    again = _example_tensors(["ids=2x5:int64", "w=2x5:float16"])["w"]
    assert torch.equal(named["w"], again)  # seeded
    (single,) = _example_tensors(["3x4"])
    assert single.dtype == torch.float32 and tuple(single.shape) == (3, 4)
    with pytest.raises(StitchError, match="static dims"):
        _example_tensors(["Nx4"])
    assert _signature(["Nx4:float32", "?x2:int32"]) == [([None, 4], "float32"), ([None, 2], "int32")]
    assert _signature(["a=Nx4"]) == {"a": ([None, 4], "float32")}
    assert _signature(None) is None
    with pytest.raises(StitchError, match="name every input or none"):
        _signature(["a=Nx4", "Nx2"])
