"""`onnxstitch quantize` / `onnxstitch fp16` through typer's CliRunner on the real app, then `inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from _precision_models import Hybrid, images
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.precision import part_precisions, read_precision


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_quantize_round_trip_and_inspect(hybrid: Hybrid, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    ox.save(hybrid.model, model)
    np.savez(tmp_path / "calib.npz", **{hybrid.input: images(64, 1)})
    out = tmp_path / "m.int8.onnx"
    args = [
        "quantize",
        str(model),
        "--calibration",
        str(tmp_path / "calib.npz"),
        "--part",
        "backbone",
        "--part",
        "head=fp32",
        "--min-agreement",
        "0.99",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "calibrating" in result.stderr or "quantizing" in result.stderr
    assert f"wrote {out}" in result.stdout and "output 'output':" in result.stdout
    assert "speed (batch 16, this machine's CPU" in _flat(result.stdout)
    assert "thin convolutions (1): " in _flat(result.stdout)  # the stem, timed both ways
    assert ("does not pay here" in result.stdout) == (read_precision(ox.load(out))["speed"]["ratio"] < 1)  # type: ignore[index]
    q = ox.load(out)
    onnx.checker.check_model(str(out), full_check=True)
    assert part_precisions(q) == {"backbone": "int8", "head": "fp32"}
    x = images(8, 2)
    ox.Session(out, device="cpu").run({hybrid.input: x})

    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    text = _flat(shown.stdout)
    assert "precision backbone int8, head fp32; gate passed" in text
    assert "x the float32 speed at batch 16 where it was converted" in text
    data = json.loads(CliRunner().invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert data["precision"]["parts"] == {"backbone": "int8", "head": "fp32"}
    assert data["precision"]["gate"]["passed"] is True


def test_quantize_refusal_is_one_message_and_exit_1(hybrid: Hybrid, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    ox.save(hybrid.model, model)
    np.savez(tmp_path / "zeros.npz", **{hybrid.input: np.zeros((16, 8, 8, 1), np.float32)})
    np.savez(tmp_path / "hold.npz", **{hybrid.input: images(32, 5)})
    out = tmp_path / "bad.onnx"
    args = [
        "quantize",
        str(model),
        "-c",
        str(tmp_path / "zeros.npz"),
        "--holdout",
        str(tmp_path / "hold.npz"),
        "--part",
        "backbone",
        "--part",
        "head",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert (
        "error:" in result.stderr and "costs the most" in result.stderr and "Traceback" not in result.output
    )
    assert not out.exists()
    missing = CliRunner().invoke(
        app, ["quantize", str(model), "-c", str(tmp_path / "zeros.npz"), "-o", str(out), "--part", "neck"]
    )
    assert missing.exit_code == 1 and "unknown part(s) ['neck']" in _flat(missing.stderr)


def test_fp16_round_trip(hybrid: Hybrid, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    ox.save(hybrid.model, model)
    out = tmp_path / "m.fp16.onnx"
    result = CliRunner().invoke(app, ["fp16", str(model), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["parts"] == {"backbone": "fp16", "head": "fp16"} and record["gate"]["passed"]
    assert record["speed"]["precision"] == "float16" and record["speed"]["float32_ms"] > 0
    onnx.checker.check_model(str(out), full_check=True)
    ox.Session(out, device="cpu").run({hybrid.input: images(4, 6)})
