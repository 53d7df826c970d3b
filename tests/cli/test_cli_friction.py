"""What a new user of the command line hit: wrapped errors and tables in pipes, `| head` failing,
API spellings in hints, no progress on long conversions, a demo that trained before finding a
missing package."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import onnx.parser
import pytest
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import BROKEN_PIPE_EXIT, app
from onnxstitch.cli._common import cli_words

runner = CliRunner()
LONG = "a_really_long_input_name_" + "x" * 90


@pytest.fixture(scope="module")
def long_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.onnx"
    text = (
        f'<ir_version: 8, opset_import: ["" : 18]> g (float[batch, 3] {LONG}) => (float[batch, 3] y) '
        f"{{ y = Relu({LONG}) }}"
    )
    ox.save(onnx.parser.parse_model(text), path)
    return path


def test_error_is_one_line_in_a_pipe(tmp_path: Path) -> None:
    missing = tmp_path / ("folder_with_a_long_name_" + "y" * 60) / "model.onnx"
    done = runner.invoke(app, ["inspect", str(missing)])
    assert done.exit_code == 1
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: ") and str(missing) in first and len(first) > 120


def test_table_rows_are_not_broken_in_a_pipe(long_names: Path) -> None:
    done = runner.invoke(app, ["inspect", str(long_names)])
    assert done.exit_code == 0, done.output
    rows = [line for line in done.stdout.splitlines() if LONG in line]
    assert len(rows) == 1 and "float32" in rows[0] and "[batch, 3]" in rows[0]


def test_a_terminal_keeps_its_width() -> None:
    from onnxstitch.cli._common import _CliConsole

    tty = _CliConsole(force_terminal=True, width=60)
    assert tty.width == 60
    piped = _CliConsole(file=open(__file__), force_terminal=False)  # noqa: SIM115 - read-only stand-in
    try:
        assert piped.width > 1000
    finally:
        piped.file.close()


def test_closed_stdout_exits_quietly(long_names: Path) -> None:
    """`onnxstitch inspect m.onnx | head -0`: no message, the exit status of a tool ended by SIGPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxstitch", "inspect", str(long_names)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == BROKEN_PIPE_EXIT
    assert err == ""


# ---------------------------------------------------------------------------------------- hints
def test_api_spellings_become_flags() -> None:
    text = "pass validate=False for those; loosen rtol/atol only for noise; or rtol=1e-3, try opset=18"
    assert cli_words(text) == (
        "pass --no-validate for those; loosen --rtol/--atol only for noise; or --rtol 1e-3, try --opset 18"
    )
    assert cli_words("or pass trusted=True if") == "or pass --trusted if"
    assert "--rtol/--atol" in cli_words("--rtol/--atol")  # already flags: untouched


NOISY = """
import torch


class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def build():
    return Noisy()
"""


def test_validation_failure_hint_speaks_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    name = f"noisy_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NOISY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    done = runner.invoke(app, ["convert", "torch", f"{name}:build", "-e", "2x4", "-o", "n.onnx"])
    assert done.exit_code == 1
    error = done.stderr[done.stderr.index("error: ") :]
    assert "fix:" in error and "--rtol" in error
    for api in ("validate=False", "rtol=", "atol="):
        assert api not in error


# ------------------------------------------------------------------------------------- progress
@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")

    x = keras.Input((6,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="y")(x))
    path = tmp_path_factory.mktemp("k") / "tiny.keras"
    model.save(path)
    return path


def test_conversion_shows_its_stages_on_stderr(keras_file: Path, tmp_path: Path) -> None:
    library = logging.getLogger("onnxstitch")
    before = (library.level, list(library.handlers))
    done = runner.invoke(app, ["convert", "keras", str(keras_file), "-o", str(tmp_path / "t.onnx")])
    assert done.exit_code == 0, done.output
    stages = [line for line in done.stderr.splitlines() if line.startswith(f"converting {keras_file}")]
    text = "\n".join(stages)
    assert "tracing" in text and "tf2onnx" in text and "validating" in text, done.stderr
    pattern = rf"converting {re.escape(str(keras_file))} \[ *\d+\.\d s\] \w"
    assert all(re.match(pattern, line) for line in stages[1:])
    assert "wrote" in done.stdout and "converting" not in done.stdout
    assert (library.level, list(library.handlers)) == before  # the progress display is gone


def test_json_output_has_no_progress(keras_file: Path, tmp_path: Path) -> None:
    args = ["convert", "keras", str(keras_file), "-o", str(tmp_path / "t.onnx"), "--json"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "tracing" not in done.stderr


# ----------------------------------------------------------------------------------------- demo
def test_demo_names_a_missing_package_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxstitch.demo._run as run

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the demo started training")

    monkeypatch.setattr(run, "train_first", no_training)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    started = time.monotonic()
    done = runner.invoke(app, ["demo", "--out", str(tmp_path / "out")])
    assert done.exit_code == 1
    assert "matplotlib" in done.stderr and "the plot" in done.stderr and "onnxstitch[demo]" in done.stderr
    assert time.monotonic() - started < 10
