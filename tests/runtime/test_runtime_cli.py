"""`onnxstitch run | verify | bench`: the real console script for a few cases, CliRunner for the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxstitch.cli import app
from onnxstitch.errors import InputError

runner = CliRunner()

REFERENCE_MODULE = """
import numpy as np
from pathlib import Path

_P = np.load(Path(__file__).with_name("mlp_params.npz"))

def good(x):
    return np.maximum(x @ _P["W"] + _P["B"], 0)

def bad(x):
    return good(x) + 0.01

def as_dict(x):
    return {"y": good(x)}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, mlp_model: onnx.ModelProto) -> Path:
    """A folder holding mlp.onnx, its weights, a reference module and input files."""
    folder = tmp_path_factory.mktemp("cli")
    onnx.save(mlp_model, str(folder / "mlp.onnx"))
    params = {i.name: onnx.numpy_helper.to_array(i) for i in mlp_model.graph.initializer}
    np.savez(folder / "mlp_params.npz", **params)
    (folder / "clirefs_mlp.py").write_text(textwrap.dedent(REFERENCE_MODULE))
    x = np.random.default_rng(11).standard_normal((10, 4)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.savez(folder / "feeds.npz", x=x)
    return folder


@pytest.fixture
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    return work


def _flat(text: str) -> str:
    """Text with rich's line wrapping undone (whitespace runs collapsed)."""
    return " ".join(text.split())


def _script() -> str:
    found = shutil.which("onnxstitch")
    if found is None:
        pytest.skip("the onnxstitch console script is not installed (pip install -e .)")
    return found


def test_console_script_run_saves_outputs(work: Path, mlp_ref: Any) -> None:
    out = work / "out_script.npz"
    done = subprocess.run(
        [_script(), "run", "mlp.onnx", "--input", "x=x.npy", "--output", str(out), "--device", "cpu"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "10x5" in done.stdout and "saved 1 output(s)" in done.stdout
    with np.load(out) as saved:
        assert saved.files == ["y"]
        np.testing.assert_allclose(saved["y"], mlp_ref(np.load(work / "x.npy")), rtol=1e-5, atol=1e-6)


def test_console_script_verify_mismatch_exits_1(work: Path) -> None:
    command = [_script(), "verify", "mlp.onnx", "--reference", "clirefs_mlp:bad"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "✗" in done.stdout and "max abs err" in done.stdout
    assert "does not match the reference" in _flat(done.stderr)
    ok = subprocess.run(
        [*command[:-1], "clirefs_mlp:good"], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "all outputs match" in ok.stdout


def test_console_script_input_error_exit_1(work: Path) -> None:
    done = subprocess.run(
        [_script(), "run", "mlp.onnx", "--input", "image=x.npy", "--device", "cpu"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "unknown input 'image'" in _flat(done.stderr)
    assert "missing input 'x': expected float32[batch, 4]" in _flat(done.stderr)
    assert "Traceback" not in _flat(done.stderr)


def test_run_npz_batched_json(in_work: Path, mlp_ref: Any) -> None:
    result = runner.invoke(
        app, ["run", "mlp.onnx", "--input", "feeds.npz", "--batch-size", "3", "--output", "o.npy", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["outputs"] == {"y": {"dtype": "float32", "shape": [10, 5]}}
    assert data["providers"][-1] == "CPUExecutionProvider"
    np.testing.assert_allclose(
        np.load(in_work / "o.npy"), mlp_ref(np.load(in_work / "x.npy")), rtol=1e-5, atol=1e-6
    )


def test_run_threads_option(in_work: Path) -> None:
    result = runner.invoke(app, ["run", "mlp.onnx", "-i", "x=x.npy", "--threads", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "10x5" in result.stdout
    assert runner.invoke(app, ["run", "mlp.onnx", "-i", "x=x.npy", "--threads", "0"]).exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "x=missing.npy"], "input file 'missing.npy' does not exist"),
        (["-i", "x.npy"], "a bare file must be an .npz"),
        (["-i", "x=feeds.npz"], "a name= spec takes one .npy array"),
        (["-i", "=x.npy"], "expected name=file.npy"),
        (["-i", "x=x.npy", "-i", "feeds.npz"], "input 'x' is given more than once"),
        (["-i", "x=x.npy", "-o", "out.txt"], "'out.txt' must end in .npz (all outputs by name) or .npy"),
        (["-i", "x=x.npy", "-o", "d1"], "--output 'd1' is a folder; name the file to write in it"),
        (["-i", "x=text.npy"], "text.npy is not a NumPy .npy file (it looks like text)"),
        (["-i", "text.npz"], "text.npz is not a NumPy .npz file (it looks like text)"),
        (["-i", "x=x.npy", "--device", "tpu"], "unknown device 'tpu'"),
        (["-i", "x=mlp.onnx"], "mlp.onnx is not a NumPy .npy file (its first bytes are not NumPy's)"),
    ],
)
def test_run_errors(in_work: Path, args: list[str], message: str) -> None:
    (in_work / "d1").mkdir(exist_ok=True)
    (in_work / "text.npy").write_text("1 2 3\n4 5 6\n")
    (in_work / "text.npz").write_text("1 2 3\n")
    result = runner.invoke(app, ["run", "mlp.onnx", *args])
    assert result.exit_code == 1
    assert message in _flat(result.stderr)
    assert "pickle" not in result.stderr and "an .npy holds exactly one output" not in result.stderr


def test_output_path_checked_for_the_number_of_outputs(tmp_path: Path) -> None:
    from onnxstitch.cli.run import check_output_path

    check_output_path(tmp_path / "o.npy", 1)
    check_output_path(tmp_path / "o.npz", 3)
    with pytest.raises(InputError, match=r"an \.npy file holds one array, the model has 2 outputs") as info:
        check_output_path(tmp_path / "o.npy", 2)
    assert info.value.hint is not None and "o.npz" in info.value.hint
    with pytest.raises(InputError, match=r"must end in \.npz \(all outputs by name\)") as info:
        check_output_path(tmp_path / "o.txt", 2)
    assert ".npy" not in str(info.value)


def test_run_missing_model_is_usage_error(in_work: Path) -> None:
    result = runner.invoke(app, ["run", "nope.onnx"])
    assert result.exit_code == 2


def test_verify_options_and_json(in_work: Path) -> None:
    result = runner.invoke(
        app,
        ["verify", "mlp.onnx", "-r", "clirefs_mlp:as_dict", "--batch-sizes", "2,5", "--seed", "3", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert [(r["output"], r["batch"]) for r in data["rows"]] == [("y", 2), ("y", 5)]


def test_verify_tolerances_decide(in_work: Path) -> None:
    base = ["verify", "mlp.onnx", "-r", "clirefs_mlp:bad"]
    failed = runner.invoke(app, [*base, "--json"])
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["passed"] is False
    loose = runner.invoke(app, [*base, "--atol", "0.02", "--rtol", "0"])
    assert loose.exit_code == 0, loose.output
    assert "rtol=0 atol=0.02" in loose.stdout


def test_verify_given_feeds(in_work: Path) -> None:
    result = runner.invoke(app, ["verify", "mlp.onnx", "-r", "clirefs_mlp:good", "--feeds", "feeds.npz"])
    assert result.exit_code == 0, result.output
    assert "10x5" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-r", "clirefs_mlp"], "is not of the form 'package.module:name'"),
        (["-r", "clirefs_mlp:nothing"], "has no attribute 'nothing'"),
        (["-r", "no_such_module_xyz:f"], "cannot import module"),
        (
            ["-r", "clirefs_mlp:good", "--batch-sizes", "1,x"],
            "not a comma-separated list of positive integers",
        ),
        (["-r", "clirefs_mlp:good", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_verify_errors(in_work: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", "mlp.onnx", *args])
    assert result.exit_code == 1
    assert message in _flat(result.stderr)


def test_bench_json(in_work: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "mlp.onnx",
            "--batch",
            "1,4",
            "--threads",
            "1",
            "--warmup",
            "1",
            "--repeats",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"] == "auto"  # like run; verify stays on cpu
    assert all(r["throughput"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"]) for r in data["rows"])
    assert [r["batch"] for r in data["rows"]] == [1, 4]
    assert all(r["repeats"] == 3 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in data["rows"])
    assert data["threads"] == 1 and data["providers"] == ["CPUExecutionProvider"]
    assert data["session_seconds"] > 0 and data["peak_rss_mb"] > 0


def test_device_defaults_and_help() -> None:
    bench_help = _flat(runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"}).stdout)
    assert "batch / mean latency" in bench_help and "[default: auto]" in bench_help
    verify_help = _flat(runner.invoke(app, ["verify", "--help"], env={"COLUMNS": "200"}).stdout)
    assert "exact parity" in verify_help and "[default: cpu]" in verify_help


def test_bench_table_and_options(in_work: Path) -> None:
    result = runner.invoke(
        app, ["bench", "mlp.onnx", "-b", "2", "--repeats", "2", "--warmup", "0", "--optimization", "basic"]
    )
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.stdout and "session creation" in result.stdout
    assert "samples/s (batch/mean)" in _flat(result.stdout)
    bad = runner.invoke(app, ["bench", "mlp.onnx", "--batch", "0"])
    assert bad.exit_code == 1 and "positive integers" in _flat(bad.stderr)
    bad = runner.invoke(app, ["bench", "mlp.onnx", "--device", "tpu"])
    assert bad.exit_code == 1 and "unknown device 'tpu'" in _flat(bad.stderr)
    bad = runner.invoke(app, ["bench", "mlp.onnx", "--optimization", "max"])
    assert bad.exit_code == 1 and "unknown optimization level 'max'" in _flat(bad.stderr)
