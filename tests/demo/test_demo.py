"""The hybrid demo end to end, at reduced epochs: the API (keras-torch) and the CLI (torch-keras).

Each flavour runs once per module (fixtures) and the tests check its artefacts: the ONNX model loads
and agrees with the native chain, the Triton config parses as Triton's ModelConfig, the report and
the plot exist and say what happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import onnxstitch as ox
from onnxstitch.demo import ProgressEvent, run_demo, stages
from onnxstitch.demo._data import load_digits_split
from onnxstitch.errors import StitchError

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits_split()


@pytest.fixture(scope="module")
def keras_torch(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("demo") / "out"
    events: list[ProgressEvent] = []
    result = run_demo(
        out, epochs=2, seed=0, flavour="keras-torch", threads=2, repeats=3, progress=events.append
    )
    return result, events, out


def _parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def test_files_written(keras_torch) -> None:  # type: ignore[no-untyped-def]
    result, _, out = keras_torch
    assert result.out_dir == out
    int8 = {"model_int8": out / "hybrid.int8.onnx"} if result.int8_passed else {}
    assert result.files == {
        "model": out / "hybrid.onnx",
        **int8,
        "triton": out / "triton" / "hybrid",
        "triton_config": out / "triton" / "hybrid" / "config.pbtxt",
        "plot": out / "demo.png",
        "picture": out / "parts.svg",
        "report": out / "report.md",
    }
    assert (out / "hybrid.int8.onnx").is_file() == result.int8_passed
    assert (out / "triton" / "hybrid" / "1" / "model.onnx").is_file()
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "demo.png").stat().st_size > 10_000


def test_model_agrees_with_native_chain(keras_torch, digits) -> None:  # type: ignore[no-untyped-def]
    result, _, out = keras_torch
    model = ox.load(out / "hybrid.onnx")
    onnx.checker.check_model(model, full_check=True)
    session = ox.Session(out / "hybrid.onnx", device="cpu")
    assert [i.name for i in session.inputs] == ["image"]
    assert session.inputs[0].shape == ("batch", 8, 8, 1)
    logits = session.run({"image": digits.x_test})["logits"]
    native = result.native.predict(digits.x_test)
    np.testing.assert_allclose(logits, native, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), native.argmax(1))
    # the Triton copy is the same model
    triton_logits = ox.Session(out / "triton" / "hybrid" / "1" / "model.onnx").run({"image": digits.x_test})
    np.testing.assert_array_equal(triton_logits["logits"], logits)


def test_numbers(keras_torch, digits) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = keras_torch
    assert (result.n_train, result.n_test) == (1437, 360) == (len(digits.y_train), len(digits.y_test))
    assert result.verified
    assert result.predictions_equal and result.same_predictions == 360
    assert result.merged_accuracy == result.native_accuracy
    assert result.merged_accuracy > 0.5  # two epochs per part already learn a lot
    assert 0 <= result.max_abs_error < 1e-4
    assert result.confusion.sum() == 360
    assert np.trace(result.confusion) == round(result.merged_accuracy * 360)
    assert [r.batch for r in result.latency] == [1, 64]
    assert all(r.native_ms > 0 and r.merged_ms > 0 and r.parts_ms > 0 for r in result.latency)
    assert all(r.int8_ms is not None and r.int8_ms > 0 for r in result.latency)
    assert (result.threads, result.repeats, result.epochs, result.seed) == (2, 3, 2, 0)
    assert result.adapters == []  # a flat feature vector needs no layout adapter
    assert result.input_layout == "NHWC" and result.feature_shape == (64,)


def test_int8_row(keras_torch, digits) -> None:  # type: ignore[no-untyped-def]
    """ox.quantize made the conv backbone int8 and kept the small torch head float32 (what pays);
    the numbers are the int8 model's own, recomputed here from the model."""
    from onnxstitch.demo._int8 import quantize_merged
    from onnxstitch.precision import part_precisions

    result, _, out = keras_torch
    assert result.int8_parts == {"backbone": "int8", "head": "fp32"}
    assert result.int8_accuracy is not None and result.int8_accuracy > 0.5
    assert 0.9 * 360 <= result.int8_same_predictions <= 360
    assert (
        "precision gate (backbone: int8, head: fp32)" in result.int8_gate
    ) and "native" in result.int8_gate
    if result.int8_passed:
        model = ox.load(out / "hybrid.int8.onnx")
    else:  # refused: not written; the demo measured the model ox.quantize makes without the gate
        train = digits.x_train
        model = quantize_merged(
            ox.load(out / "hybrid.onnx"), result.native.predict, "image", train, digits.x_test
        ).model
    assert part_precisions(model) == result.int8_parts
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    predicted = ox.Session(model, device="cpu").run({"image": digits.x_test})["logits"].argmax(1)
    assert result.int8_accuracy == float((predicted == digits.y_test).mean())
    assert result.int8_same_predictions == int(
        (predicted == result.native.predict(digits.x_test).argmax(1)).sum()
    )
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"{100 * result.int8_accuracy:.2f} %" in text and "int8 merged model (ms)" in text
    assert f"**{result.int8_same_predictions} / 360**" in text and result.int8_gate in text


def test_triton_config_parses(keras_torch) -> None:  # type: ignore[no-untyped-def]
    _, _, out = keras_torch
    config = _parse_config(out / "triton" / "hybrid" / "config.pbtxt")
    assert config.name == "hybrid"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size > 0
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
        ("image", [8, 8, 1], model_config_pb2.TYPE_FP32)
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]


def test_report(keras_torch) -> None:  # type: ignore[no-untyped-def]
    result, _, out = keras_torch
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# onnxstitch demo: Keras backbone + PyTorch head (keras-torch)")
    assert "**360 / 360**" in text
    assert f"{100 * result.merged_accuracy:.2f} %" in text
    assert "| 1 |" in text and "| 64 |" in text
    for part in ("backbone", "head"):
        assert any(line.startswith(part) for line in text.splitlines())
    assert result.verify_table in text and "✓" in result.verify_table
    assert str(out / "hybrid.onnx") in text
    assert "![the merged model's parts, seams and adapters](parts.svg)" in text


def test_picture_of_the_demo_hybrid(keras_torch) -> None:  # type: ignore[no-untyped-def]
    _, _, out = keras_torch
    graph = ox.describe(out / "hybrid.onnx")["graph"]
    assert [(p["part"], p["source"]) for p in graph["parts"]] == [("backbone", "keras"), ("head", "torch")]
    assert [(s["from"].split(":")[0], s["to"].split(":")[0]) for s in graph["seams"]] == [
        ("backbone", "head")
    ]
    assert graph["adapters"] == []  # a feature vector crosses the seam: nothing to adapt
    assert [i["name"] for i in graph["inputs"]] == ["image"] and [o["name"] for o in graph["outputs"]] == [
        "logits"
    ]
    root = ET.parse(out / "parts.svg").getroot()
    assert root.tag.endswith("svg")


def test_progress_events(keras_torch) -> None:  # type: ignore[no-untyped-def]
    _, events, _ = keras_torch
    keys = [key for key, _ in stages("keras-torch")]
    started = [e.stage for e in events if e.completed == 0 and not e.finished]
    finished = [e.stage for e in events if e.finished]
    assert started == keys and finished == keys
    epochs = [e.completed for e in events if e.stage == "train_first" and not e.finished]
    assert epochs == [0, 1, 2]
    assert all(e.title == dict(stages("keras-torch"))[e.stage] for e in events)
    verify = next(e for e in events if e.stage == "verify" and e.finished)
    assert "360/360 same" in verify.detail


def test_seed_makes_training_reproducible(digits) -> None:  # type: ignore[no-untyped-def]
    from onnxstitch.demo._train import setup_frameworks, train_first

    def trained(seed: int) -> np.ndarray:
        setup_frameworks(seed=seed, threads=2)
        first = train_first("torch-keras", digits, epochs=1)
        return first.model.conv1.weight.detach().numpy().copy()

    a, b, c = trained(3), trained(3), trained(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flavour": "jax-torch"}, "unknown flavour 'jax-torch'"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"threads": 0}, "threads must be a positive integer"),
    ],
)
def test_bad_options_refused_before_work(tmp_path: Path, options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(StitchError, match=message):
        run_demo(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_unwritable_out_refused_before_training(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    events: list[ProgressEvent] = []
    with pytest.raises(StitchError, match="is an existing file"):
        run_demo(afile, progress=events.append)
    with pytest.raises(StitchError, match="cannot write to output folder '/proc/nope'"):
        run_demo("/proc/nope", progress=events.append)
    assert events == []  # not even the data was loaded


@pytest.mark.parametrize("out", ["/proc/nope", "afile"])
def test_cli_bad_out_fails_at_once(tmp_path: Path, out: str) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "onnxstitch", "demo", "--out", out],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and out in proc.stderr
    assert "Traceback" not in proc.stderr and "Training" not in proc.stdout


@pytest.fixture(scope="module")
def cli_torch_keras(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cli") / "demo out"
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxstitch",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--seed",
            "1",
            "--flavour",
            "torch-keras",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    return proc, out


def test_cli_torch_keras_summary(cli_torch_keras) -> None:  # type: ignore[no-untyped-def]
    proc, _ = cli_torch_keras
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for title in dict(stages("torch-keras")).values():
        assert title in text
    assert "onnxstitch demo (torch-keras, seed 1, 2 epochs)" in text
    assert "same predicted digit on 360/360 test images" in text
    assert "layout adapter" in text and "Transpose" in text
    assert "hybrid.onnx" in text and "report.md" in text and "demo.png" in text


def test_cli_torch_keras_artefacts(cli_torch_keras, digits) -> None:  # type: ignore[no-untyped-def]
    proc, out = cli_torch_keras
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = ox.load(out / "hybrid.onnx")
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    adapter = [n for n in transposes if any(p.value.endswith(".adapter") for p in n.metadata_props)]
    assert len(adapter) == 1
    assert list(adapter[0].attribute[0].ints) == [0, 2, 3, 1]  # NCHW → NHWC at the seam
    session = ox.Session(out / "hybrid.onnx", device="cpu")
    assert session.inputs[0].shape == ("batch", 1, 8, 8)
    logits = session.run({"image": np.ascontiguousarray(digits.x_test.transpose(0, 3, 1, 2))})["logits"]
    assert logits.shape == (360, 10)
    config = _parse_config(out / "triton" / "hybrid" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [1, 8, 8])]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "PyTorch trunk + Keras head (torch-keras)" in report
    assert "head.adapter: Transpose" in report
    accuracy = float((logits.argmax(1) == digits.y_test).mean())
    assert f"| merged ONNX model (`hybrid.onnx`, onnxruntime) | {100 * accuracy:.2f} % |" in report
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    graph = ox.describe(out / "hybrid.onnx")["graph"]
    assert [(p["part"], p["source"]) for p in graph["parts"]] == [("trunk", "torch"), ("head", "keras")]
    [automatic] = graph["adapters"]
    assert automatic["kind"] == "automatic" and automatic["ops"] == ["Transpose"]
    assert graph["seams"][0]["via"] == automatic["id"] and "→" in (graph["seams"][0]["layout"] or "")
    assert ET.parse(out / "parts.svg").getroot().tag.endswith("svg")


def test_cli_refuses_unknown_flavour() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnxstitch", "demo", "--flavour", "jax"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "jax" in proc.stderr and "keras-torch" in proc.stderr


def _synthetic_result(tmp_path: Path, *, native_ms: float):  # type: ignore[no-untyped-def]
    from onnxstitch.demo import DemoResult, LatencyRow

    files = {
        "model": tmp_path / "hybrid.onnx",
        "triton": tmp_path / "triton" / "hybrid",
        "triton_config": tmp_path / "triton" / "hybrid" / "config.pbtxt",
        "plot": tmp_path / "demo.png",
        "report": tmp_path / "report.md",
    }
    return DemoResult(
        flavour="torch-keras",
        seed=7,
        epochs=3,
        threads=2,
        repeats=5,
        n_train=1437,
        n_test=360,
        first_framework="torch",
        second_framework="keras",
        first_accuracy=0.9,
        feature_shape=(4, 4, 32),
        input_name="image",
        input_layout="NCHW",
        input_shape=("batch", 1, 8, 8),
        output_name="logits",
        native_accuracy=0.95,
        merged_accuracy=0.95,
        same_predictions=360,
        max_abs_error=3e-6,
        verified=True,
        verify_table="(table)",
        latency=[LatencyRow(1, 0.5, 0.05, 0.4), LatencyRow(64, native_ms, 0.6, 1.5)],
        summary="(parts)",
        adapters=["head.adapter: Transpose"],
        files=files,
    )


def _column_end(line: str, k: int) -> int:
    """Where the k-th number ("1.23 ms" or "95.00 %") of a summary row ends."""
    return [m.end() for m in re.finditer(r"\d+\.\d+ (?:ms|%)", line)][k - 1]


@pytest.mark.parametrize("native_ms", [1.8, 60.0])
def test_cli_summary_explains_a_contended_native_chain(tmp_path: Path, native_ms: float) -> None:
    from rich.console import Console

    from onnxstitch.cli.demo import _summary

    result = _synthetic_result(tmp_path, native_ms=native_ms)
    console = Console(record=True, width=200)
    console.print(_summary(result))
    text = console.export_text()
    assert "onnxstitch demo (torch-keras, seed 7, 3 epochs)" in text
    assert "layout adapter by itself (head.adapter: Transpose)" in text
    assert "100.0× faster" in text if native_ms == 60.0 else "3.0× faster" in text
    rows = [line for line in text.splitlines() if re.match(r"│\s+(latency, batch|test accuracy) ", line)]
    assert len(rows) == 3
    # right-aligned: the native numbers end in one column, the merged ones in another
    native_ends = {_column_end(line, 1) for line in rows}
    merged_ends = {_column_end(line, 2) for line in rows}
    assert len(native_ends) == 1 and len(merged_ends) == 1, rows
    narrow = Console(record=True, width=80)
    narrow.print(_summary(result))
    narrow_text = narrow.export_text()
    table = narrow_text[narrow_text.index("native") : narrow_text.index("latency, batch 64") + 80]
    assert "× faster)" in table and "…" not in table  # the numbers table is not cut at 80 columns
    contended = "At batch 64 the native chain is slowed" in text
    assert contended == (native_ms == 60.0)
    if contended:
        assert "take 1.50 ms in total" in text


def test_report_of_synthetic_result(tmp_path: Path) -> None:
    from onnxstitch.demo._report import render_report

    text = render_report(_synthetic_result(tmp_path, native_ms=60.0))
    assert text.startswith("# onnxstitch demo: PyTorch trunk + Keras head (torch-keras)")
    assert "| 64 | 60.000 | 1.500 | 0.600 | 100.0× |" in text
    assert "- `head.adapter: Transpose`" in text
    assert "input `image` (NCHW, shape" in text and "['batch', 1, 8, 8]" in text


def test_plot_titles_fit_in_the_figure(tmp_path: Path) -> None:
    from onnxstitch.demo._report import figure, write_plot

    result = _synthetic_result(tmp_path, native_ms=60.0)
    result.confusion = np.diag(np.full(10, 36))
    fig = figure(result)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert any("same digit as native on 360/360" in t.get_text() for t in titles)
    for title in [*titles, fig._suptitle]:
        box = title.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1, title.get_text()
        assert box.y0 >= 0 and box.y1 <= fig.bbox.y1, title.get_text()
    assert write_plot(result, tmp_path / "demo.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("passed", [True, False])
def test_int8_in_summary_report_and_plot(tmp_path: Path, passed: bool) -> None:
    from rich.console import Console

    from onnxstitch.cli.demo import _summary
    from onnxstitch.demo import LatencyRow
    from onnxstitch.demo._report import figure, render_report

    result = _synthetic_result(tmp_path, native_ms=60.0)
    result.latency = [LatencyRow(1, 0.5, 0.05, 0.4, 0.04), LatencyRow(64, 60.0, 0.6, 1.5, 0.25)]
    result.int8_parts = {"trunk": "int8", "head": "int8"}
    result.int8_accuracy = 0.9472
    result.int8_same_predictions = 357
    result.int8_passed = passed
    result.int8_gate = "precision gate (trunk: int8, head: int8): (table)"
    if passed:
        result.files["model_int8"] = tmp_path / "hybrid.int8.onnx"
    text = render_report(result)
    assert "| 64 | 60.000 | 1.500 | 0.600 | 100.0× | 0.250 | 2.4× |" in text
    assert "| int8 merged model (ms) | int8 speed-up vs merged |" in text
    name = "`hybrid.int8.onnx`" if passed else "not written: refused by the gate"
    assert f"| int8 merged model ({name}; trunk int8, head int8) | 94.72 % |" in text
    assert "**357 / 360**" in text and result.int8_gate in text
    assert ("**refused** it" in text) == (not passed)
    console = Console(record=True, width=200)
    console.print(_summary(result))
    summary = console.export_text()
    assert "5. Quantized it to int8 with ox.quantize (trunk int8, head int8)" in summary
    assert "357/360" in summary and "94.72 %" in summary and "(2.4× vs merged)" in summary
    assert ("refused by its accuracy gate" in summary) == (not passed)
    assert ("hybrid.int8.onnx" in summary) == passed
    fig = figure(result)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "native chain",
        "merged ONNX model",
        "int8 merged model",
    ]
