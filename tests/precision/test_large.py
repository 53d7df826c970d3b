"""``quantize`` and ``to_fp16`` on models past 2 GB: the external-data route, driven with a small model.

``_large.LARGE_BYTES`` (2·10⁹, as ``ox.save``'s external-data threshold) is lowered so that a 1.6 MB
convolutional model takes the route a model past protobuf's limit takes: files with external data,
onnxruntime's tools with ``use_external_data_format``, sessions from paths, the result read back by
the hardened reader. The real thing (2.4 GB of weights) is in ``test_large_big.py``, on request.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstitch as ox
from onnxstitch.precision import PrecisionReport, _large, part_precisions, read_precision

CHANNELS = (16, 64, 96, 192)


def conv_net() -> onnx.ModelProto:
    """x [batch, 16, 8, 8] -> three Conv+Relu -> GlobalAveragePool -> Flatten -> MatMul -> y [batch, 4]
    (1.6 MB of weights, each tensor past ``ox.save``'s 1 kB external-data threshold)."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i, (cin, cout) in enumerate(itertools.pairwise(CHANNELS)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32) + 0.05
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        current = f"r{i}"
    head = (rng.standard_normal((CHANNELS[-1], 4)) / np.sqrt(CHANNELS[-1])).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "head"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS[0], 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, CHANNELS[0], 8, 8), dtype=np.float32)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.asarray(ox.Session(model, device="cpu").run({"x": x})["y"])


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Drive the external-data route (``LARGE_BYTES`` lowered); temporary files go to an empty folder
    of our own, and every file the route writes for a session is recorded (the real writer runs)."""
    monkeypatch.setattr(_large, "LARGE_BYTES", 100_000)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    written: list[Path] = []
    real = _large.save_external

    def recording(model: onnx.ModelProto, path: Path) -> Path:
        out = real(model, path)
        written.append(out)
        assert out.with_name(out.name + ".data").stat().st_size > 100_000  # the weights went to external data
        return out

    monkeypatch.setattr(_large, "save_external", recording)
    calls: list[dict[str, Any]] = []
    import onnxruntime.quantization as q

    for name in ("quantize_static", "quantize_dynamic"):
        tool = getattr(q, name)

        def spy(*args: Any, _tool: Any = tool, _name: str = name, **kwargs: Any) -> Any:
            calls.append({"tool": _name, **kwargs})
            return _tool(*args, **kwargs)

        monkeypatch.setattr(q, name, spy)
    return {"scratch": scratch, "written": written, "calls": calls}


def _check_result(result: onnx.ModelProto, float_model: onnx.ModelProto, *, rtol: float) -> None:
    onnx.checker.check_model(result, full_check=True)
    stored_outside = [t.name for t in result.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert stored_outside == []  # the weights are in memory, as ox.load gives them
    x = samples(32, 99)
    got, want = _outputs(result, x), _outputs(float_model, x)
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()
    report = PrecisionReport.from_dict(read_precision(result) or {})
    assert report.passed and report.rows


def test_quantize_past_the_limit_goes_through_external_data_files(
    route: dict[str, Any], tmp_path: Path
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    model = conv_net()
    ox.save(model, user / "net.onnx", external_data=True)
    assert sorted(p.name for p in user.iterdir()) == ["net.onnx", "net.onnx.data"]
    before = _digest(user)

    result = ox.quantize(user / "net.onnx", {"x": samples(64, 1)}, parts={"model": "int8"}, min_agreement=0.9)

    assert _digest(user) == before  # the user's file and its external data are untouched
    assert list(route["scratch"].iterdir()) == []  # no temporary file left, ours or onnxruntime's
    assert [c["tool"] for c in route["calls"]] == ["quantize_static"]
    assert route["calls"][0]["use_external_data_format"] is True
    names = [p.name for p in route["written"]]
    assert names[:2] == ["float32_1.onnx", "int8_2.onnx"]  # both sessions of the gate opened from files
    assert part_precisions(result) == {"model": "int8"}
    ops = {n.op_type for n in result.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {t.name: t.data_type for t in result.graph.initializer}
    assert any(t == TensorProto.INT8 for t in weights.values())  # the convolution weights are int8
    _check_result(result, model, rtol=0.05)


def test_quantize_dynamic_past_the_limit_from_a_model_in_memory(route: dict[str, Any]) -> None:
    model = conv_net()
    before = model.SerializeToString()
    result = ox.quantize(model, {"x": samples(64, 2)}, parts={"model": "int8-dynamic"}, min_agreement=0.9)
    assert model.SerializeToString() == before
    assert list(route["scratch"].iterdir()) == []
    assert [(c["tool"], c["use_external_data_format"]) for c in route["calls"]] == [
        ("quantize_dynamic", True)
    ]
    assert "DynamicQuantizeLinear" in {n.op_type for n in result.graph.node}
    _check_result(result, model, rtol=0.05)


def test_fp16_past_the_limit_goes_through_external_data_files(route: dict[str, Any]) -> None:
    model = conv_net()
    before = model.SerializeToString()
    result = ox.to_fp16(model)
    assert model.SerializeToString() == before
    assert list(route["scratch"].iterdir()) == []
    assert [p.name for p in route["written"]][:3] == ["infer_in.onnx", "float32_1.onnx", "float16_2.onnx"]
    halves = {t.name for t in result.graph.initializer if t.data_type == TensorProto.FLOAT16}
    assert {"w0", "w1", "w2", "head"} <= halves
    assert part_precisions(result) == {"model": "fp16"}
    _check_result(result, model, rtol=0.01)


def test_under_the_limit_nothing_is_written_for_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    real = _large.save_external
    monkeypatch.setattr(_large, "save_external", lambda m, p: written.append(p) or real(m, p))
    model = conv_net()
    assert not _large.is_large(model) and _large.LARGE_BYTES == 2_000_000_000
    result = ox.to_fp16(model)
    assert written == []
    _check_result(result, model, rtol=0.01)


def test_past_the_limit_the_thin_stem_is_not_timed_but_kept_float32(
    route: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxstitch.precision import _quantize

    monkeypatch.setattr(_quantize, "THIN_CHANNELS", 32)  # conv0 (16 input channels) counts as thin
    result = ox.quantize(conv_net(), {"x": samples(64, 1)}, min_agreement=0.9)
    settings = read_precision(result)["settings"]  # type: ignore[index]
    assert settings["kept_fp32"] == ["conv0"] and settings["min_conv_channels"] == "auto"
    assert settings["thin_convs"]["decided"].startswith("not timed: the model is past 2 GB")
    assert "thin convolutions (1): kept float32: not timed" in str(
        PrecisionReport.from_dict(read_precision(result) or {})
    )
    assert [c["tool"] for c in route["calls"]] == ["quantize_static"]  # one way only
